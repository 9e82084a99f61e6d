"""Rows and batches of the latent stages.

Rows come from an embedding-cache split (which rows were encoded, their cached mean embedding)
joined by the cache's ``index`` column to the raw texts (the pairs' source / target, the
pretraining text and its ledger ``source`` name); :func:`stage_rows` applies a stage's caps and
:func:`cached_embeddings_usable` decides whether the cached embeddings stand in for the encoder.
A stage then turns its rows into row-aligned tensors (:func:`stage_tensors`) and
:class:`RowBatches` serves them to the training engine (in process, or through a DataLoader's
workers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xoron_pipelines.latent.encoder import resolve_encoder_dir

log = logging.getLogger(__name__)


@dataclass
class Rows:
    """Texts of one stage's split; ``emb`` holds the cached embeddings when usable (else None)."""

    sources: list[str]
    targets: list[str]
    origin: list[str | None] = field(default_factory=list)
    emb: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def take(self, keep: list[int]) -> Rows:
        return Rows(
            [self.sources[i] for i in keep],
            [self.targets[i] for i in keep],
            [self.origin[i] for i in keep],
            None if self.emb is None else self.emb[keep],
        )


def cache_rows(split: Any, texts: dict[int, tuple[str, str, str | None]], use_embeddings: bool) -> Rows:
    """Rows of a cache split in cache order; ``texts``: raw index -> (source, target, origin)."""
    src, tgt, origin, embs = [], [], [], []
    for rec in split:
        i = int(rec["index"])
        if i not in texts:
            raise ValueError(f"cache row with index {i} has no raw text: the cache is stale, rerun embedding_cache")
        s, t, o = texts[i]
        src.append(s)
        tgt.append(t)
        origin.append(o)
        if use_embeddings:
            embs.append(np.asarray(rec["embedding"], dtype=np.float32))
    return Rows(src, tgt, origin, np.stack(embs) if use_embeddings and embs else None)


def cap_rows(rows: Rows, caps: dict[str, int], total: int | None) -> Rows:
    """Keep at most ``caps[origin]`` rows per origin and ``total`` rows in all (first ones)."""
    seen: dict[str, int] = {}
    keep = []
    for i, o in enumerate(rows.origin):
        if o in caps:
            if seen.get(o, 0) >= caps[o]:
                continue
            seen[o] = seen.get(o, 0) + 1
        keep.append(i)
        if total is not None and len(keep) >= total:
            break
    return rows.take(keep)


def cache_indices(cache: Any) -> set[int]:
    """Raw row indices held by a cache subset (both splits)."""
    return {int(i) for split in cache.splits.values() for i in split.read(["index"]).column("index").to_pylist()}


def cached_embeddings_usable(cache: Any, model: Any, p: Any, encoder_trains: bool) -> bool:
    """The cached embeddings stand in for the encoder when preprocessing is on, the cache was
    made for training by this encoder (same files, mean pooling, normalisation and length limit)
    and the encoder has not been trained; otherwise the texts are encoded on the fly."""
    meta = cache.manifest
    enc = meta["encoder"]
    same_encoder = (
        Path(enc["path"]).resolve() == resolve_encoder_dir(model.cfg.encoder_model).resolve()
        and meta["embedding"]["normalize"] == model.encoder.normalize
        and enc["max_length"] == model.encoder.max_len
    )
    return bool(
        p.run_preprocessing
        and meta.get("cache_use_embeddings_for_training", True)
        and same_encoder
        and meta["embedding"]["pooling"] == "mean"
        and not encoder_trains
        and not model.encoder_trained
    )


def stage_rows(cache: Any, texts: dict, p: Any, stage: str, use_emb: bool) -> tuple[Rows, Rows]:
    """Train and validation rows of a stage, with the per-source and total caps applied."""
    total = p.stage_value(stage, "max_samples")
    if stage.startswith("finetune") and p.max_train_samples is not None:
        total = min(total or p.max_train_samples, p.max_train_samples)
    caps = p.dataset_caps(stage) if stage.startswith("pretrain") else {}
    train = cap_rows(cache_rows(cache.train, texts, use_emb), caps, total)
    val = cap_rows(cache_rows(cache.val, texts, use_emb), caps, total)
    return train, val if len(val) else train


def decoder_ids(tokenizer: Any, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder target ids (text tokens + EOS, cut to ``max_len``) right-padded, and their mask."""
    eos = tokenizer.eos_token_id
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_len - (eos is not None)]
        rows.append(ids + ([eos] if eos is not None else []))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


@torch.no_grad()
def encode_once(encoder: Any, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Pooled embeddings of ``texts`` with the (frozen) encoder, in order."""
    was = encoder.training
    encoder.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = encoder.tokenize(texts[i : i + batch_size])
        out.append(encoder(ids, mask))
    encoder.train(was)
    return torch.cat(out)


def encoder_side(model: Any, texts: list[str], prefix: str, emb: np.ndarray | None, on_the_fly: bool) -> dict:
    """Tensors of the encoder side of ``texts``: token counts and either the (cached or
    once-encoded) embeddings or, when the encoder trains, the token ids and mask."""
    ids, mask = model.encoder.tokenize(texts)
    out = {f"{prefix}_ntok": mask.sum(1)}
    if on_the_fly:
        out[f"{prefix}_ids"], out[f"{prefix}_mask"] = ids, mask
    elif emb is not None:
        out[f"{prefix}_emb"] = torch.as_tensor(emb)
    else:
        out[f"{prefix}_emb"] = encode_once(model.encoder, texts)
    return {k: v.cpu() for k, v in out.items()}


def stage_tensors(
    model: Any, rows: Rows, *, kind: str, identity: bool, encoder_trains: bool, tokenizer: Any, max_target_len: int
) -> dict[str, torch.Tensor]:
    """Row-aligned tensors a stage's loss needs (see :func:`xoron_pipelines.latent.stages.stage_loss`)."""
    out = encoder_side(model, rows.sources, "src", rows.emb, encoder_trains)
    if kind == "middle" and not identity:
        out.update(encoder_side(model, rows.targets, "tgt", None, encoder_trains))
    if kind == "adapter":
        out["dec_ids"], out["dec_mask"] = decoder_ids(tokenizer, rows.targets, max_target_len)
    return out


class _EpochBatches(torch.utils.data.Dataset):
    """Batches ``start``, ``start + 1``, ... of one epoch, as a map-style dataset for a DataLoader."""

    def __init__(self, source: RowBatches, epoch: int, start: int) -> None:
        self.source, self.epoch, self.start = source, epoch, start

    def __len__(self) -> int:
        return len(self.source) - self.start

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.source.make_batch(self.epoch, self.start + i)


class RowBatches:
    """Training-engine batch source over row-aligned tensors: ``len`` = full batches per epoch
    (one smaller batch when there are fewer rows than ``batch_size``); the row order of epoch
    ``e`` is the permutation of ``numpy.random.default_rng([seed, e])``.

    With ``num_workers`` > 0 the batches of an epoch are made by a ``torch.utils.data.DataLoader``
    with that many worker processes and ``prefetch_factor`` (seed 004's knobs), in order; a
    request out of sequence (a resume) starts a new loader at that batch. Batches are the same
    whatever the number of workers. ``pin_memory``: the loader pins them (for a GPU)."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.tensors = tensors
        self.pin_memory = pin_memory  # the DataLoader's (batches bound for a GPU)
        self.rows = len(next(iter(tensors.values())))
        if self.rows < 1:
            raise ValueError("a latent stage has no rows to train on")
        self.batch_size = min(batch_size, self.rows)
        self.seed = seed
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self._loader: Any = None
        self._next: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.rows // self.batch_size

    def make_batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """Batch ``index`` of ``epoch``, made in this process."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
        pick = torch.as_tensor(order[index * self.batch_size : (index + 1) * self.batch_size])
        return {k: v[pick] for k, v in self.tensors.items()}

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        if self.num_workers == 0:
            return self.make_batch(epoch, index)
        if self._next != (epoch, index):
            self._loader = iter(
                torch.utils.data.DataLoader(
                    _EpochBatches(self, epoch, index),
                    batch_size=None,
                    shuffle=False,
                    num_workers=self.num_workers,
                    prefetch_factor=self.prefetch_factor,
                    pin_memory=self.pin_memory,
                )
            )
        out = next(self._loader)
        self._next = (epoch, index + 1)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loader": None, "_next": None}  # workers get the tensors, not the loader

    def all(self) -> list[dict[str, torch.Tensor]]:
        """Every row once, in order, in batches (evaluation)."""
        return [
            {k: v[i : i + self.batch_size] for k, v in self.tensors.items()}
            for i in range(0, self.rows, self.batch_size)
        ]
