"""Multimodal stages' data: media records -> training items -> deterministic micro-batches.

A media table (``media_<modality>``, columns :data:`~xoron_pipelines.data.media.MEDIA_COLUMNS`)
gives, per row of the wanted split, up to two *items* (prompt -> target):

- image / video: ``caption`` ("Describe the image." -> the caption) and ``vqa`` (the row's
  question -> its answer);
- audio: ``transcribe`` ("Transcribe the audio." -> the transcript, the row's caption).

An item's ids are ``[bos] + media_prompt_ids(...) + prompt + "\\n"`` (the *context*) followed by
the target's ids and ``eos`` (the *continuation*); the loss is on the continuation only. The media
enter the model as projected embeddings in the slot of :func:`media_prompt_ids` (contract); a
*blind* forward passes the same ids without media (the slot stays empty: the plain LLM).

:class:`MediaBatchSource` is a :class:`~xoron_pipelines.training.data.BatchSource`: micro-batch
``index`` of ``epoch`` depends only on (seed, epoch, index), so the engine's checkpoints resume
it exactly. Each micro-batch draws one size (multi-scale, :mod:`xoron_pipelines.data.multiscale`)
from ``numpy.random.default_rng([seed, epoch, index])`` and resizes its images / videos to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from xoron_pipelines.data import media as media_codec
from xoron_pipelines.data.multiscale import resize_image, resize_video
from xoron_pipelines.training.data import IGNORE_INDEX

log = logging.getLogger(__name__)

Modality = Literal["image", "video", "audio"]
Task = Literal["caption", "vqa", "transcribe"]

#: the tasks each modality trains and evaluates
TASKS: dict[str, tuple[str, ...]] = {"image": ("caption", "vqa"), "video": ("caption", "vqa"), "audio": ("transcribe",)}
CAPTION_PROMPT = {"image": "Describe the image.", "video": "Describe the video."}
TRANSCRIBE_PROMPT = "Transcribe the audio."


@dataclass(frozen=True)
class Item:
    """One training / evaluation item: media row ``media`` of the split, prompt -> target."""

    media: int
    task: str
    prompt: str
    target: str
    choices: tuple[str, ...] = ()


# --------------------------------------------------------------------------- records -> items
def split_rows(table: pd.DataFrame, modality: str, split: str) -> pd.DataFrame:
    """The rows of ``split`` of a media table of ``modality``, in table order; a table of another
    modality or without the split is an error naming what it holds."""
    if table is None or len(table) == 0:
        raise ValueError(f"media_{modality} is empty: run the synth and data_processing pipelines first")
    found = sorted(set(table["modality"]))
    if found != [modality]:
        raise ValueError(f"media_{modality} holds modalities {found}, expected only {modality!r}")
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"media_{modality} has no {split!r} rows (splits: {sorted(set(table['split']))})")
    return rows


def items_of(rows: pd.DataFrame, modality: str, tasks: Sequence[str]) -> list[Item]:
    """The items of ``tasks`` for every row (a row without a question gives no ``vqa`` item)."""
    unknown = sorted(set(tasks) - set(TASKS[modality]))
    if unknown:
        raise ValueError(f"{modality}: tasks {unknown} do not apply (its tasks: {list(TASKS[modality])})")
    out: list[Item] = []
    for i, row in enumerate(rows.itertuples(index=False)):
        choices = tuple(json.loads(row.choices)) if row.choices else ()
        if "caption" in tasks and row.caption:
            out.append(Item(i, "caption", CAPTION_PROMPT[modality], row.caption))
        if "vqa" in tasks and row.question and row.answer:
            out.append(Item(i, "vqa", row.question, row.answer, choices))
        if "transcribe" in tasks and row.caption:
            out.append(Item(i, "transcribe", TRANSCRIBE_PROMPT, row.caption))
    return out


def decode_media(rows: pd.DataFrame) -> list[np.ndarray]:
    """Decoded media of ``rows`` (image uint8 HxWx3, video uint8 TxHxWx3, audio float32 (N,) at
    16 kHz); a row that does not decode is an error naming its id (data_processing validated them)."""
    out = []
    for row in rows.to_dict("records"):
        try:
            out.append(media_codec.decode(row))
        except media_codec.MediaError as err:
            raise ValueError(f"media row {row['id']!r}: {err}") from err
    return out


def media_digest(rows: pd.DataFrame) -> str:
    """Content identity of the rows a stage reads (media bytes and texts), for its fingerprint."""
    h = hashlib.sha256()
    for col in ("id", "media", "caption", "question", "answer", "choices"):
        for value in rows[col]:
            h.update(value if isinstance(value, bytes) else str(value).encode())
            h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- tokens
class ItemTokenizer:
    """Ids of items: the context (bos, media slot, prompt) and the continuation (target, eos)."""

    def __init__(self, tokenizer, modality: str, slot: list[int]) -> None:
        self.tokenizer, self.modality, self.slot = tokenizer, modality, list(slot)
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.media_start = len(self.bos)  # where the slot starts in every context

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context(self, prompt: str) -> list[int]:
        return self.bos + self.slot + self.encode(prompt + "\n")

    def continuation(self, target: str) -> list[int]:
        return self.encode(target) + [self.eos]

    def example(self, item: Item, max_len: int | None = None) -> tuple[list[int], list[int]]:
        """(ids, labels) of a training item: labels are -100 on the context."""
        ctx, cont = self.context(item.prompt), self.continuation(item.target)
        ids = ctx + cont
        labels = [IGNORE_INDEX] * len(ctx) + cont
        if max_len is not None and len(ids) > max_len:
            if len(ctx) >= max_len:
                raise ValueError(f"max_seq_len {max_len} leaves no room for a target after the {len(ctx)}-id context")
            ids, labels = ids[:max_len], labels[:max_len]
        return ids, labels

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def pad_rows(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


# --------------------------------------------------------------------------- media -> tensors
def image_tensor(images: Sequence[np.ndarray], size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 HxWx3 images -> float32 (B, 3, h, w) in [0, 1], resized to ``size``
    (:func:`~xoron_pipelines.data.multiscale.resize_image`; None: all must share one size)."""
    arrays = [resize_image(img, size) if size is not None else np.asarray(img) for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


def video_tensor(videos: Sequence[np.ndarray], shape: tuple[int, int, int] | None) -> torch.Tensor:
    """uint8 TxHxWx3 clips -> float32 (B, T', 3, h, w) in [0, 1]: ``shape = (frames, h, w)``
    (:func:`~xoron_pipelines.data.multiscale.resize_video`); None keeps the clips as they are."""
    arrays = [resize_video(clip, shape) if shape is not None else np.asarray(clip) for clip in videos]
    return torch.from_numpy(np.stack(arrays)).permute(0, 1, 4, 2, 3).float().div_(255.0)


def audio_tensor(waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 waveforms -> (B, N) zero-padded and their lengths (B,) int64."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    out = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(waves):
        out[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return out, lengths


def media_inputs(modality: str, media: Sequence[np.ndarray], shape: tuple[int, ...] | None) -> dict[str, Any]:
    """The model's media keyword arguments for a list of decoded media (contract names)."""
    if modality == "image":
        return {"images": image_tensor(media, shape)}
    if modality == "video":
        return {"videos": video_tensor(media, shape)}
    wave, lengths = audio_tensor(media)
    return {"audio": wave, "audio_lengths": lengths}


def eval_shape(modality: str, scales) -> tuple[int, ...] | None:
    """The fixed media shape of evaluation: the multi-scale base size (``image_base_size``;
    ``video_base_frames`` x ``video_base_size``); None for audio."""
    if modality == "image":
        return (scales.image_base_size, scales.image_base_size)
    if modality == "video":
        return (scales.video_base_frames, scales.video_base_size, scales.video_base_size)
    return None


# --------------------------------------------------------------------------- the batch source
class MediaBatchSource:
    """Shuffled micro-batches of items with their media (see the module doc).

    ``sample_shape(step, total, rng) -> shape | None`` draws a micro-batch's media shape
    (``step`` = the micro-batch's position in the run, ``total`` = :attr:`total_micro_steps`,
    set by the stage once it knows its length); the last incomplete batch of an epoch is dropped.
    Audio batches also carry ``transcripts`` (the items' target texts, a list of str: the
    audio encoder's CTC head trains on them).
    """

    def __init__(
        self,
        items: list[Item],
        media: list[np.ndarray],
        encoder: ItemTokenizer,
        batch_size: int,
        seed: int,
        sample_shape=None,
        shuffle: bool = True,
        max_len: int | None = None,
    ) -> None:
        if len(items) < batch_size:
            raise ValueError(f"{len(items)} {encoder.modality} items cannot fill one batch of {batch_size}")
        self.items, self.media, self.encoder = items, media, encoder
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.sample_shape = sample_shape
        self.examples = [encoder.example(item, max_len) for item in items]
        self.total_micro_steps = 1

    def __len__(self) -> int:
        return len(self.items) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.items)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def batch(self, epoch: int, index: int) -> dict[str, Any]:
        picked = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        ids = pad_rows([self.examples[i][0] for i in picked], self.encoder.pad)
        labels = pad_rows([self.examples[i][1] for i in picked], IGNORE_INDEX)
        mask = pad_rows([[1] * len(self.examples[i][0]) for i in picked], 0)
        shape = None
        if self.sample_shape is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            shape = self.sample_shape(epoch * len(self) + index, self.total_micro_steps, rng)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        batch.update(media_inputs(self.encoder.modality, [self.media[self.items[i].media] for i in picked], shape))
        if self.encoder.modality == "audio":
            batch["transcripts"] = [self.items[i].target for i in picked]
        return batch


__all__ = [
    "CAPTION_PROMPT",
    "TASKS",
    "TRANSCRIBE_PROMPT",
    "Item",
    "ItemTokenizer",
    "MediaBatchSource",
    "audio_tensor",
    "decode_media",
    "eval_shape",
    "image_tensor",
    "items_of",
    "media_digest",
    "media_inputs",
    "split_rows",
    "video_tensor",
]
