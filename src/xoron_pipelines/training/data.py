"""Batch sources: deterministic, random-access micro-batches for the training loop.

A :class:`BatchSource` has ``len(source)`` micro-batches per epoch and returns micro-batch
``index`` of ``epoch`` with ``source.batch(epoch, index)``. The row order of an epoch is a
permutation drawn from ``numpy.random.default_rng([seed, epoch])``, so it depends only on
(seed, epoch, number of rows): the loop can resume at a saved (epoch, index) without replaying
earlier batches, and two runs see the same data in the same order.

Batches are ``{"input_ids": int64 (B, T), "labels": int64 (B, T)}`` (+ ``"loss_weights"`` float32
(B, T) when given). ``labels`` equal ``input_ids`` (the model shifts them) with padding positions
set to -100; a row's padding starts at its ``length`` when lengths are known (the packed Parquet
shards of the data pipeline carry a ``length`` column).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _tensor(values, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.as_tensor`` without sharing a read-only NumPy buffer (arrays that come from Arrow
    are read-only: torch would warn and hand out a tensor that must never be written)."""
    if isinstance(values, np.ndarray) and not values.flags.writeable:
        values = values.copy()
    return torch.as_tensor(values, dtype=dtype)


@runtime_checkable
class BatchSource(Protocol):
    """Random-access, epoch-deterministic micro-batches."""

    def __len__(self) -> int:
        """Micro-batches per epoch."""

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``index`` (0 <= index < len) of ``epoch``."""


class TokenRowsSource:
    """Micro-batches over equal-length token rows held as a 2-D array (base of both sources).

    ``ids``: (N, T) integers; ``lengths``: (N,) real tokens per row (rest is padding) or None;
    ``loss_weights``: (N, T) floats or None. ``shuffle=False`` keeps file order in every epoch.
    The last incomplete batch is dropped, so every micro-batch has ``batch_size`` rows.
    """

    def __init__(
        self,
        ids: np.ndarray | torch.Tensor,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        lengths: np.ndarray | torch.Tensor | None = None,
        loss_weights: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        ids = _tensor(ids)
        if ids.ndim != 2 or ids.dtype.is_floating_point:
            raise ValueError(f"token rows must be a 2-D integer array, got {tuple(ids.shape)} {ids.dtype}")
        if batch_size < 1 or ids.shape[0] < batch_size:
            raise ValueError(f"{ids.shape[0]} rows cannot fill one batch of {batch_size}")
        self.ids = ids
        self.lengths = None if lengths is None else _tensor(lengths, torch.int64)
        self.loss_weights = None if loss_weights is None else _tensor(loss_weights, torch.float32)
        if self.loss_weights is not None and self.loss_weights.shape != ids.shape:
            raise ValueError(f"loss_weights {tuple(self.loss_weights.shape)} must match ids {tuple(ids.shape)}")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def num_rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])

    def __len__(self) -> int:
        return self.num_rows // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """Row order of ``epoch`` (cached for the current epoch)."""
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            else:
                perm = np.arange(self.num_rows)
            self._order = (epoch, perm)
        return self._order[1]

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        rows = torch.from_numpy(self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size].copy())
        input_ids = self.ids[rows].to(torch.int64)
        labels = input_ids.clone()
        if self.lengths is not None:
            pad = torch.arange(self.seq_len)[None, :] >= self.lengths[rows][:, None]
            labels[pad] = IGNORE_INDEX
        out = {"input_ids": input_ids, "labels": labels}
        if self.loss_weights is not None:
            out["loss_weights"] = self.loss_weights[rows]
        return out


class TensorBatchSource(TokenRowsSource):
    """Micro-batches over an in-memory ``(N, T)`` tensor of token ids."""


class ParquetBatchSource(TokenRowsSource):
    """Micro-batches over Parquet token rows: one file, or a directory of ``part-*.parquet`` shards.

    Column ``input_ids`` (list<int32>, every row the same length) is required; ``length`` (int32,
    real tokens per row) and ``loss_weights`` (list<float>) are used when present. The columns are
    decoded once into a contiguous int32 array (4 bytes per token), read with pyarrow.
    """

    def __init__(
        self, path: str | os.PathLike, batch_size: int, seed: int = 0, shuffle: bool = True, shrink_batch: bool = False
    ) -> None:
        """``shrink_batch``: fewer rows than ``batch_size`` make one smaller batch of all of them (a
        validation split of a small corpus) instead of an error."""
        self.path = Path(path)
        table = _read_table(self.path)
        ids = _fixed_rows(table, "input_ids", np.int32)
        if shrink_batch and 0 < ids.shape[0] < batch_size:
            log.warning(
                "%s: %d rows, fewer than the batch size %d: one batch of %d",
                path,
                ids.shape[0],
                batch_size,
                ids.shape[0],
            )
            batch_size = ids.shape[0]
        lengths = table.column("length").to_numpy() if "length" in table.column_names else None
        weights = _fixed_rows(table, "loss_weights", np.float32) if "loss_weights" in table.column_names else None
        super().__init__(ids, batch_size, seed, shuffle, lengths=lengths, loss_weights=weights)


def _read_table(path: Path) -> pa.Table:
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no part-*.parquet shards in {path}")
    wanted = {"input_ids", "length", "loss_weights"}
    tables = []
    for f in files:
        names = pq.read_schema(f).names
        if "input_ids" not in names:
            raise ValueError(f"{f} has no input_ids column (columns: {names})")
        tables.append(pq.read_table(f, columns=[c for c in names if c in wanted]))
    return pa.concat_tables(tables)


def _fixed_rows(table: pa.Table, column: str, dtype: type) -> np.ndarray:
    """A list column whose rows all have the same length, as a (N, T) numpy array."""
    col = table.column(column).combine_chunks()
    sizes = col.value_lengths().to_numpy(zero_copy_only=False)
    if len(sizes) == 0 or (sizes != sizes[0]).any():
        raise ValueError(
            f"column {column!r} must hold rows of one length (got lengths {sorted(set(sizes.tolist()))[:5]})"
        )
    values = np.array(col.flatten().to_numpy(zero_copy_only=False), dtype=dtype)  # writable copy for torch
    return values.reshape(len(sizes), int(sizes[0]))


class ShardedBatchSource:
    """One data-parallel rank's share of another source: rows ``[rank*b/W, (rank+1)*b/W)`` of every
    micro-batch, where b is the wrapped source's batch size (the *global* micro-batch) and W the
    number of ranks. The shards of all ranks are disjoint and together are exactly the global batch,
    and the positions ``(epoch, index)`` are the same on every rank and for any W.
    """

    def __init__(self, source: BatchSource, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.source, self.rank, self.world_size = source, rank, world_size

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        full = self.source.batch(epoch, index)
        rows = next(iter(full.values())).shape[0]
        if rows % self.world_size:
            raise ValueError(
                f"a micro-batch of {rows} rows cannot be split evenly over {self.world_size} "
                f"data-parallel processes; make the batch size a multiple of {self.world_size}"
            )
        per = rows // self.world_size
        return {k: v[self.rank * per : (self.rank + 1) * per] for k, v in full.items()}
