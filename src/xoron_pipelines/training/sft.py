"""Supervised fine-tuning data: chat-rendered conversations, loss on assistant tokens only.

One conversation (``[{"role", "content"}, ...]``) becomes one example:

* ``input_ids`` -- BOS (when the tokenizer has one, as the pretraining packer starts every
  document with it) followed by the text of ``tokenizer.apply_chat_template(messages,
  tokenize=False)``; right-truncated to ``max_len`` ids.
* ``labels`` -- ``-100`` everywhere except the tokens of each assistant turn: its content *and*
  its closing tag ``<|/assistant|>``, so the model learns where to stop. The opening tag and the
  newline after it are part of the prompt (``add_generation_prompt=True`` renders them), the
  newline after the closing tag belongs to the next turn. Labels are not shifted (the model
  shifts them, as for pretraining batches).
* ``loss_weights`` -- seed 000's block weights (:mod:`xoron_pipelines.training.losses`): 1.5 /
  1.3 / 1.2 / 1.2 inside chain-of-thought / tool / anti-hallucination / code-execution blocks,
  the highest where they nest, 1.0 elsewhere.

Assistant spans are found in characters by rendering the conversation prefix by prefix (the
template is checked to be prefix-stable) and mapped to tokens through the fast tokenizer's
offsets: a token belongs to the span its first character falls in.

:func:`collate` right-pads examples into a batch; :class:`ExampleBatchSource` serves padded
batches to :func:`xoron_pipelines.training.train` deterministically per (seed, epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from xoron_pipelines.tokens import CHAT_ROLES
from xoron_pipelines.training.data import IGNORE_INDEX
from xoron_pipelines.training.losses import BlockWeighter, LossWeights

log = logging.getLogger(__name__)

Example = dict[str, torch.Tensor]
Messages = Sequence[Mapping[str, Any]]


def _render(tokenizer, messages: Messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_char_spans(messages: Messages, tokenizer, first_target: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the ``[start, end)`` character span of every assistant turn
    from message ``first_target`` on (from the first content character to the end of the closing
    tag)."""
    full = _render(tokenizer, messages)
    close = CHAT_ROLES["assistant"][1]
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < first_target:
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        turn = _render(tokenizer, messages[: i + 1])
        turn_end = len(turn)
        if not full.startswith(prompt) or not full.startswith(turn):
            raise ValueError("the chat template is not prefix-stable; assistant turns cannot be located")
        stop = full.rfind(close, len(prompt), turn_end)
        if stop < 0:
            raise ValueError(f"assistant turn {i} does not end with {close!r} in the rendered text")
        spans.append((len(prompt), stop + len(close)))
    return full, spans


def build_sft_example(
    messages: Messages, tokenizer, max_len: int, weighter: BlockWeighter | None = None, first_target: int = 0
) -> Example:
    """``{input_ids, labels, loss_weights}`` (1-D tensors) of one conversation; see the module doc.

    ``tokenizer`` must be a fast (``tokenizers``-backed) tokenizer carrying the chat template.
    ``weighter`` defaults to seed 000's weights (:class:`LossWeights` defaults). Only assistant
    turns at message index ``first_target`` or later are targets (DPO: the answer, not the
    assistant turns of a multi-turn prompt).
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("build_sft_example needs a fast tokenizer (offsets mapping)")
    text, spans = assistant_char_spans(messages, tokenizer, first_target)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    starts = np.array([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
    target = np.zeros(len(ids), dtype=bool)
    for a, b in spans:
        target |= (starts >= a) & (starts < b)
    if tokenizer.bos_token_id is not None:
        ids, target = [tokenizer.bos_token_id, *ids], np.concatenate([[False], target])
    input_ids = torch.tensor(ids[:max_len], dtype=torch.int64)
    labels = torch.where(torch.from_numpy(target[:max_len]), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    weighter = weighter or BlockWeighter.from_tokenizer(tokenizer, LossWeights())
    return {"input_ids": input_ids, "labels": labels, "loss_weights": weighter(input_ids)}


def has_targets(example: Example) -> bool:
    """Whether a next-token target is left (a label past position 0 not -100)."""
    return bool((example["labels"][1:] != IGNORE_INDEX).any())


def build_sft_dataset(
    conversations: Iterable[Messages], tokenizer, max_len: int, weights: LossWeights | None = None
) -> list[Example]:
    """Examples of ``conversations``; ones left without an assistant token (truncated away, or no
    assistant turn) are dropped and counted in the log."""
    weighter = BlockWeighter.from_tokenizer(tokenizer, weights or LossWeights())
    examples, dropped = [], 0
    for messages in conversations:
        example = build_sft_example(messages, tokenizer, max_len, weighter)
        if has_targets(example):
            examples.append(example)
        else:
            dropped += 1
    if dropped:
        log.warning(
            "dropped %d of %d conversations with no assistant token within max_len=%d",
            dropped,
            dropped + len(examples),
            max_len,
        )
    return examples


def collate(examples: Sequence[Example], pad_token_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad 1-D examples to the longest (or ``pad_to``) into a batch.

    Padding: ``input_ids`` -> ``pad_token_id``, ``labels`` -> -100, ``loss_weights`` -> 0,
    and ``attention_mask`` (added) 1 on real tokens, 0 on padding. Keys ending in ``input_ids``,
    ``labels`` or ``loss_weights`` with a prefix (``chosen_input_ids`` ...) are padded the same
    way, each prefix getting its own ``<prefix>attention_mask``.
    """
    if not examples:
        raise ValueError("collate() needs at least one example")
    out: dict[str, torch.Tensor] = {}
    prefixes = {k[: -len("input_ids")] for k in examples[0] if k.endswith("input_ids")}
    for prefix in sorted(prefixes):
        rows = [ex[f"{prefix}input_ids"] for ex in examples]
        width = max(len(r) for r in rows) if pad_to is None else pad_to
        if any(len(r) > width for r in rows):
            raise ValueError(f"an example is longer than pad_to={pad_to}")
        fills = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "loss_weights": 0.0}
        for field, fill in fills.items():
            key = f"{prefix}{field}"
            if key in examples[0]:
                out[key] = torch.stack(
                    [torch.nn.functional.pad(ex[key], (0, width - len(ex[key])), value=fill) for ex in examples]
                )
        lengths = torch.tensor([len(r) for r in rows])
        out[f"{prefix}attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return out


class ExampleBatchSource:
    """Random-access batches over a list of examples (a :class:`~xoron_pipelines.training.data.BatchSource`).

    The row order of an epoch is ``numpy.random.default_rng([seed, epoch]).permutation`` (as the
    token-row sources), so resuming at a saved (epoch, index) replays nothing; the last incomplete
    batch is dropped. ``collate_fn`` turns a list of examples into a batch.
    """

    def __init__(
        self,
        examples: Sequence[Mapping[str, torch.Tensor]],
        batch_size: int,
        collate_fn: Callable[[list], dict[str, torch.Tensor]],
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1 or len(examples) < batch_size:
            raise ValueError(f"{len(examples)} examples cannot fill one batch of {batch_size}")
        self.examples, self.batch_size, self.collate_fn = list(examples), batch_size, collate_fn
        self.seed, self.shuffle = seed, shuffle
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.examples) // self.batch_size

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        if self._order is None or self._order[0] != epoch:
            n = len(self.examples)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order = (epoch, perm)
        rows = self._order[1][index * self.batch_size : (index + 1) * self.batch_size]
        return self.collate_fn([self.examples[int(i)] for i in rows])


__all__ = [
    "ExampleBatchSource",
    "assistant_char_spans",
    "build_sft_dataset",
    "build_sft_example",
    "collate",
    "has_targets",
]
