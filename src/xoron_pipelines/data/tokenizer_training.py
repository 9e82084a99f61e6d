"""Byte-level BPE tokenizer trained with ``tokenizers`` and wrapped for ``transformers``.

Special tokens come from the one registry, :mod:`xoron_pipelines.tokens` (the Xoron-Dev set
and the code-model markers, deduplicated there); they take the first ids, in registry order,
and each encodes to exactly one id. The chat template of the registry is attached, so the saved
directory loads with ``AutoTokenizer.from_pretrained(path)`` and ``apply_chat_template`` works.
No post-processor is set: ``encode`` adds no BOS/EOS; packing adds them per document.

:func:`load_existing` takes an existing tokenizer instead (``data_processing.tokenizer_name``):
a local directory or ``tokenizer.json`` file, or a hub id when online; the registry's special
tokens it lacks are added (new ids after its vocabulary), BOS / EOS / PAD / UNK become the
registry's, and the chat template is the project's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from xoron_pipelines.tokens import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    all_special_tokens,
)

log = logging.getLogger(__name__)

#: the knob that names an existing tokenizer (named in every error about it)
TOKENIZER_NAME_KEY = "data_processing.tokenizer_name"


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


def load_existing(name: str, model_max_length: int | None = None) -> tuple[Any, list[str]]:
    """An existing fast tokenizer with the project's special tokens; ``(tokenizer, added)``,
    ``added`` the registry tokens it lacked (in registry order), now new ids after its vocabulary.

    ``name``: a local directory (``save_pretrained`` output, or one holding just ``tokenizer.json``),
    a ``tokenizer.json`` file, or a Hugging Face hub id (downloaded when online; offline
    (``HF_HUB_OFFLINE=1``) only a copy already in the local cache is used). Raises ``ValueError``
    naming :data:`TOKENIZER_NAME_KEY` when it cannot be loaded, or is a slow (Python) tokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    check_existing(name)
    path = Path(name).expanduser()
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    where = f"{TOKENIZER_NAME_KEY}={name!r}"
    file = path if path.is_file() else path / "tokenizer.json"
    if path.is_dir() and not (path / "tokenizer_config.json").is_file() and not file.is_file():
        raise ValueError(f"{where}: the directory has neither tokenizer_config.json nor tokenizer.json")
    try:
        if file.is_file() and not (path / "tokenizer_config.json").is_file():
            hf = PreTrainedTokenizerFast(tokenizer_file=str(file), **kwargs)
        else:  # a transformers tokenizer directory, or a hub id (offline: from the cache only)
            local = path.is_dir() or hub_offline()
            hf = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name, local_files_only=local, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- any loader failure is reported against the knob
        raise ValueError(f"{where}: could not load the tokenizer: {type(exc).__name__}: {exc}") from exc
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"{where}: {type(hf).__name__} is not a fast tokenizer (a tokenizer.json is needed)")
    vocab = hf.get_vocab()
    added = [t for t in special_tokens() if t not in vocab]
    named = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN}
    extra = [t for t in special_tokens() if t not in named.values()]
    hf.add_special_tokens({**named, "extra_special_tokens": extra}, replace_extra_special_tokens=False)
    hf.chat_template = CHAT_TEMPLATE
    if added:
        log.info("%s: added %d special tokens of the registry it lacked: %s", where, len(added), added)
    return hf, added


def looks_like_path(name: str) -> bool:
    """Whether a ``tokenizer_name`` that is not on disk was meant as a path (not a hub id
    ``org/name``): it starts with ``.``, ``/`` or ``~``, or has more than one ``/``."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


_TRUE = ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """Whether the Hugging Face hub may not be reached (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "0").upper() in _TRUE


def check_existing(name: str) -> None:
    """Fail early (``ValueError`` naming the knob) when ``tokenizer_name`` cannot be found: a path
    that does not exist, or a hub id while offline with nothing in the local cache (instead of
    the hub's traceback later). Called when the parameters are validated."""
    path = Path(name).expanduser()
    if path.exists():
        return
    where = f"{TOKENIZER_NAME_KEY}={name!r}"
    if looks_like_path(name):
        raise ValueError(f"{where}: no such file or directory ({path.absolute()})")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = (try_to_load_from_cache(name, f) for f in ("tokenizer.json", "tokenizer_config.json"))
        if not any(isinstance(c, str) for c in cached):
            raise ValueError(
                f"{where}: not a local file or directory, and the Hugging Face hub is offline "
                f"(HF_HUB_OFFLINE=1) with no cached copy; give the path of a tokenizer directory, "
                f"or run once online"
            )
