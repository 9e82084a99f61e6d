"""Byte-level BPE tokenizer trained with ``tokenizers`` and wrapped for ``transformers``.

Special tokens come from the one registry, :mod:`xoron_pipelines.tokens` (the Xoron-Dev set
and the code-model markers, deduplicated there); they take the first ids, in registry order,
and each encodes to exactly one id. The chat template of the registry is attached, so the saved
directory loads with ``AutoTokenizer.from_pretrained(path)`` and ``apply_chat_template`` works.
No post-processor is set: ``encode`` adds no BOS/EOS; packing adds them per document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from xoron_pipelines.tokens import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    all_special_tokens,
)


def special_tokens() -> list[str]:
    """The registry's special tokens, each once, in registry order."""
    return list(dict.fromkeys(all_special_tokens()))


def capped(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    """``texts`` until ``max_chars`` characters have been yielded (None = all)."""
    used = 0
    for text in texts:
        if max_chars is not None and used >= max_chars:
            return
        yield text if max_chars is None else text[: max_chars - used]
        used += len(text)


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    show_progress: bool = False,
    length: int | None = None,
) -> Tokenizer:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``texts`` (streamed)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def wrap(tok: Tokenizer, model_max_length: int | None = None):
    """A ``PreTrainedTokenizerFast`` around ``tok`` with the special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    named = {BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN}
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[t for t in special_tokens() if t not in named],
        **kwargs,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def stats(hf) -> dict[str, float]:
    """Size figures of a wrapped tokenizer (for MLflow)."""
    return {
        "vocab_size": float(len(hf)),
        "num_special_tokens": float(len(special_tokens())),
    }
