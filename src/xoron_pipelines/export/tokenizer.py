"""The exported tokenizer and special ids: an export generates from the ids training saw.

Every training row starts with BOS when the tokenizer has one: the packer writes each document
as ``[BOS] + ids + [EOS]`` (:mod:`xoron_pipelines.data.packing`) and an SFT / DPO row is BOS +
the chat template's text (:func:`xoron_pipelines.training.sft.build_sft_example`). The training
tokenizer itself adds nothing (``encode`` is the bare BPE; packing and SFT add BOS), so that its
ids stay what the packed data holds. The exported copy (:func:`export_tokenizer`) adds the BOS
itself, as users of ``transformers`` / llama.cpp expect:

* ``tokenizer.json``'s post-processor is a ``TemplateProcessing`` ``<|bos|> $A`` (``encode``,
  ``pipeline("text-generation")`` and llama.cpp's ``add_bos`` give BOS + text, like a packed
  document), and ``tokenizer_config.json`` says ``add_bos_token: true`` (written by
  :func:`mark_add_bos`; transformers 5 reads the post-processor, older readers the flag);
* the chat template renders ``bos_token`` first, so ``apply_chat_template(messages)`` -- which
  tokenizes without special tokens -- gives exactly an SFT row's ids.

Generation stops at EOS and at the end of an assistant turn (:func:`stop_ids`): SFT trains the
model to close its turn with ``<|/assistant|>`` (that token is a label; nothing follows it in
the row), so a chat answer ends there, and plain text ends with EOS as every packed document does.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import processors

from xoron_pipelines.tokens import CHAT_ROLES

#: the token that closes an assistant turn: a stop token beside EOS
END_OF_TURN = CHAT_ROLES["assistant"][1]
#: put before a chat template that does not render the BOS itself
BOS_PREFIX = "{{- bos_token -}}\n"
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _template_adds_bos(tokenizer, template: str) -> bool:
    probe = [{"role": "user", "content": "x"}]
    text = tokenizer.apply_chat_template(probe, chat_template=template, tokenize=False)
    return text.startswith(tokenizer.bos_token)


def export_tokenizer(tokenizer):
    """A copy of the training ``tokenizer`` that adds the BOS every training row starts with
    (post-processor and chat template; see the module docstring). Ids of the text itself are
    unchanged; a tokenizer without a BOS token is copied as it is. Idempotent."""
    tok = copy.deepcopy(tokenizer)
    if tok.bos_token is None:
        return tok
    bos = tok.bos_token
    # a pair is one BOS then both texts (a row is one document); llama.cpp's converter reads this form
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1", special_tokens=[(bos, tok.bos_token_id)]
    )
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str) and not _template_adds_bos(tok, template):
        tok.chat_template = BOS_PREFIX + template
    return tok


def mark_add_bos(directory: str | Path, tokenizer) -> None:
    """Record ``add_bos_token`` / ``add_eos_token`` in ``directory/tokenizer_config.json`` (what
    the exported ``tokenizer`` does); transformers 5 drops the keys on save, readers such as
    llama.cpp's converter and transformers 4 use them. The file is rewritten in place: call it
    inside the export's staging directory."""
    path = Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    ids = tokenizer("x")["input_ids"]
    config["add_bos_token"] = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    config["add_eos_token"] = tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def special_ids(tokenizer) -> dict[str, int | None]:
    """``{bos_token_id, eos_token_id, pad_token_id}`` of ``tokenizer`` (None where it has none)."""
    return {name: getattr(tokenizer, name, None) for name in SPECIAL_IDS}


def end_of_turn_id(tokenizer) -> int | None:
    """Id of :data:`END_OF_TURN` in ``tokenizer``, None when it is not one token of it."""
    tid = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    return None if tid is None or tid == tokenizer.unk_token_id else int(tid)


def stop_ids(tokenizer) -> list[int]:
    """Ids generation stops at: EOS, then the end of an assistant turn (each when present)."""
    ids = [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
    return list(dict.fromkeys(i for i in ids if i is not None))


@contextlib.contextmanager
def model_special_ids(model, tokenizer) -> Iterator[dict[str, Any]]:
    """Set ``model.config``'s bos / eos / pad ids to the tokenizer's for the block (what the
    exported config.json then holds), restoring them afterwards. A model whose config already
    names a different id than the tokenizer is refused (ValueError naming both), as is an id
    beyond the model's vocabulary."""
    config = model.config
    ids = special_ids(tokenizer)
    for name, value in ids.items():
        have = getattr(config, name, None)
        if have is not None and value is not None and have != value:
            raise ValueError(
                f"the model's config has {name}={have} but the tokenizer's is {value}: "
                "the model was trained with another tokenizer (re-run data_processing and training)"
            )
        if value is not None and value >= config.vocab_size:
            raise ValueError(f"tokenizer {name}={value} is beyond the model's vocab_size {config.vocab_size}")
    before = {name: getattr(config, name, None) for name in ids}
    try:
        for name, value in ids.items():
            setattr(config, name, value)
        yield ids
    finally:
        for name, value in before.items():
            setattr(config, name, value)


__all__ = [
    "END_OF_TURN",
    "export_tokenizer",
    "mark_add_bos",
    "model_special_ids",
    "special_ids",
    "stop_ids",
]
