"""Seed 001's ``.npy`` token files as the data of a ``causal_lm`` stage (``token_files``).

Seed 001 trains from ``--data-dir data/processed --data-file code_train_large.npy --val-file
code_val_large.npy``: 1-D NumPy arrays of token ids made by an earlier tokenisation. A stage
names them with the same words::

    token_files:
      data_dir: data/processed          # optional folder the two names are read from
      data_file: code_train_large.npy   # training ids: a .npy file, or a folder of .npy files (name order)
      val_file: code_val_large.npy      # validation ids: a .npy file, or a folder

Each file is a 1-D integer array (uint16, int32, ...), read with ``np.load(...,
allow_pickle=False, mmap_mode="r")``: memory-mapped, never loaded whole. A file is cut into rows
of the model's sequence length (``max_position_embeddings``); rows never span two files, and the
tail shorter than a row is left out (counted in the log). Every id must lie in ``[0, vocab_size)``
of the model, else a ``ValueError`` names the file and the first bad index, before training.

:class:`NpyTokenSource` serves the rows as micro-batches (labels = inputs, no padding) with the
same seeded order per epoch as the other batch sources; :func:`npy_fingerprint` identifies the
data by its content (dtype and bytes of the rows used), so a changed file starts a new
configuration while a moved one resumes.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from xoron_pipelines.validation import StrictModel

log = logging.getLogger(__name__)

#: ids checked / hashed / counted at a time (bounded memory over a memory-mapped file)
CHUNK = 1 << 22


class TokenFiles(StrictModel):
    """``token_files`` of a causal_lm stage (seed 001's ``--data-dir`` / ``--data-file`` / ``--val-file``)."""

    data_dir: str | None = Field(None, min_length=1, description="folder of data_file and val_file; null = as given")
    data_file: str = Field(min_length=1, description="training ids: a 1-D .npy file, or a folder of them")
    val_file: str = Field(min_length=1, description="validation ids: a 1-D .npy file, or a folder of them")

    def paths(self) -> dict[str, Path]:
        base = Path(self.data_dir).expanduser() if self.data_dir else Path()
        return {"train": base / self.data_file, "val": base / self.val_file}

    def check_available(self, key: str = "token_files") -> None:
        for split, path in self.paths().items():
            if not path.exists():
                name = "data_file" if split == "train" else "val_file"
                raise ValueError(
                    f"{key}.{name}: {path} does not exist (a relative path is read from the project root, "
                    f"here {Path.cwd()})"
                )


def npy_files(path: Path) -> list[Path]:
    """The .npy files of ``path``: itself, or those of a folder in name order."""
    files = [path] if path.is_file() else sorted(path.glob("*.npy"))
    if not files:
        raise ValueError(f"token_files: {path} is not a .npy file nor a folder holding one")
    return files


def open_ids(path: Path, vocab_size: int) -> np.ndarray:
    """A 1-D integer .npy file, memory-mapped, checked: every id in ``[0, vocab_size)``."""
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"token_files: {path} is not a plain .npy array: {exc}") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"token_files: {path} must hold a 1-D integer array of token ids, got {ids.dtype} {ids.shape}")
    for start in range(0, len(ids), CHUNK):
        part = np.asarray(ids[start : start + CHUNK])
        bad = np.flatnonzero((part < 0) | (part >= vocab_size))
        if len(bad):
            i = start + int(bad[0])
            raise ValueError(
                f"token_files: {path} holds id {int(ids[i])} at index {i}, outside the model's vocabulary "
                f"[0, {vocab_size}) (set model.overrides.vocab_size, or re-tokenise)"
            )
    return ids


class NpyTokenSource:
    """Micro-batches of ``seq_len``-id rows cut from memory-mapped .npy files (a
    :class:`~xoron_pipelines.training.data.BatchSource`). Row order per epoch:
    ``numpy.random.default_rng([seed, epoch]).permutation`` (in file order without ``shuffle``);
    the last incomplete batch is dropped; ``max_samples`` keeps the first rows of a seeded
    permutation (as :func:`~xoron_pipelines.training.stage_data.packed_source`). Picklable:
    workers re-open the files."""

    def __init__(
        self,
        files: list[Path],
        seq_len: int,
        vocab_size: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        max_samples: int | None = None,
    ) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.files, self.seq_len, self.vocab_size = [Path(f) for f in files], seq_len, vocab_size
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        arrays = [open_ids(f, vocab_size) for f in self.files]
        self.rows_per_file = [len(a) // seq_len for a in arrays]
        self._arrays: list[np.ndarray] | None = arrays
        self._starts = np.cumsum([0, *self.rows_per_file])
        # max_samples: the first max_samples rows of a seeded permutation (as for packed shards)
        self.subset = (
            None
            if max_samples is None or max_samples >= self._starts[-1]
            else np.sort(np.random.default_rng([seed, 7]).permutation(int(self._starts[-1]))[:max_samples])
        )
        self.num_rows = int(self._starts[-1]) if self.subset is None else len(self.subset)
        tails = sum(len(a) - r * seq_len for a, r in zip(arrays, self.rows_per_file))
        if self.num_rows < batch_size:
            raise ValueError(
                f"token_files: {', '.join(map(str, self.files))} give {self.num_rows} rows of {seq_len} ids, "
                f"fewer than one batch of {batch_size}"
            )
        log.info(
            "token files %s: %d rows of %d ids (%d trailing ids shorter than a row left out)",
            ", ".join(map(str, self.files)),
            self.num_rows,
            seq_len,
            tails,
        )
        self._order: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None, "_order": None}

    @property
    def arrays(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [np.load(f, mmap_mode="r", allow_pickle=False) for f in self.files]
        return self._arrays

    def __len__(self) -> int:
        return self.num_rows // self.batch_size

    def row(self, r: int) -> np.ndarray:
        """Row ``r`` of the files (before ``max_samples``): ids ``[k * seq_len, (k + 1) * seq_len)`` of its file."""
        f = int(np.searchsorted(self._starts, r, side="right") - 1)
        k = r - int(self._starts[f])
        return np.asarray(self.arrays[f][k * self.seq_len : (k + 1) * self.seq_len], dtype=np.int64)

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        if self._order is None or self._order[0] != epoch:
            n = self.num_rows
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order = (epoch, perm)
        rows = self._order[1][index * self.batch_size : (index + 1) * self.batch_size]
        if self.subset is not None:
            rows = self.subset[rows]
        input_ids = torch.from_numpy(np.stack([self.row(int(r)) for r in rows]))
        return {"input_ids": input_ids, "labels": input_ids.clone()}

    def chunks(self):
        """The ids of the rows used, file by file, in chunks of at most :data:`CHUNK`."""
        if self.subset is not None:
            per = max(1, CHUNK // self.seq_len)
            for start in range(0, len(self.subset), per):
                yield np.concatenate([self.row(int(r)) for r in self.subset[start : start + per]])
            return
        for array, rows in zip(self.arrays, self.rows_per_file):
            end = rows * self.seq_len
            for start in range(0, end, CHUNK):
                yield np.asarray(array[start : min(start + CHUNK, end)])


def npy_fingerprint(sources: list[NpyTokenSource], tokenizer=None) -> str:
    """Identity of the token files by content: dtype, row layout and the ids used (never names,
    sizes or times), and the tokenizer when given."""
    h = hashlib.sha256(b"" if tokenizer is None else tokenizer.backend_tokenizer.to_str().encode())
    for source in sources:
        dtypes = ",".join(str(a.dtype) for a in source.arrays)
        h.update(f"{source.seq_len}:{source.num_rows}:{dtypes}".encode())
        for chunk in source.chunks():
            h.update(np.ascontiguousarray(chunk).tobytes())
    return h.hexdigest()


def unigram_entropy(source: NpyTokenSource) -> float:
    """Entropy (nats) of the id frequencies of the rows used (the best context-free loss)."""
    counts = np.zeros(source.vocab_size, dtype=np.int64)
    for chunk in source.chunks():
        counts += np.bincount(chunk.astype(np.int64), minlength=source.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
