"""Tokenize the kept documents, mix the sources by weight, split train/val and pack.

Each document becomes ``[BOS] + ids + [EOS]``. Documents go to the validation split by a
seeded hash of (seed, source, file, row), so a document (and all its repeats) is always on one
side. Packing, to rows of exactly ``max_seq_len`` ids:

* ``concat``: documents are concatenated and cut every ``max_seq_len`` ids (a document may
  straddle two rows). All rows are full except the last of each split, which is padded.
* ``best_fit``: BOS-aligned best-fit decreasing. A document longer than ``max_seq_len`` is cut
  into ``max_seq_len`` pieces; every ``best_fit_buffer`` pieces are placed, longest first, in
  the open row with the least room that still fits, so no document is cut at a row boundary
  unless it is itself too long. Rows are padded with ``pad`` at the end.

Shard schema: ``input_ids: list<int32>`` (always ``max_seq_len`` long) and ``length: int32``
(real ids at the start of the row; the rest is padding). Every emitted id is in exactly one row
of one split. With ``export_npy`` each split directory also gets ``tokens.npy`` of shape
``(num_sequences, max_seq_len)``, int32 (seed 001's data file format).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from xoron_pipelines.data.mixing import MixSource, WeightedMixer
from xoron_pipelines.datasets.parquet_shards import ShardSet, ShardWriter, staging_dir

log = logging.getLogger(__name__)

PACKED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("length", pa.int32())])


@dataclass
class Doc:
    file: str
    row: int
    num_chars: int
    ids: np.ndarray

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


def source_docs(ledger: ShardSet, name: str, tok, batch_size: int) -> Iterator[Doc]:
    """The kept documents of source ``name`` from the ledger, tokenized batch by batch.

    The next batch is encoded in a background thread (``encode_batch_fast`` releases the GIL)
    while this one is mixed and packed, so the Python work overlaps the tokenizer's."""
    flt = (pc.field("source") == name) & (pc.field("status") == "kept")
    batches = ledger.iter_batches(columns=["file", "row", "text"], filter=flt, batch_size=batch_size)
    with ThreadPoolExecutor(max_workers=1) as pool:

        def submit(batch: pa.RecordBatch):
            texts = batch.column("text").to_pylist()
            return batch, texts, pool.submit(tok.encode_batch_fast, texts, add_special_tokens=False)

        pending = None
        for batch in batches:
            upcoming = submit(batch)
            if pending is not None:
                yield from _docs(*pending)
            pending = upcoming
        if pending is not None:
            yield from _docs(*pending)


def _docs(batch: pa.RecordBatch, texts: list[str], encoded) -> Iterator[Doc]:
    files, rows = batch.column("file").to_pylist(), batch.column("row").to_pylist()
    for f, r, t, e in zip(files, rows, texts, encoded.result()):
        yield Doc(f, r, len(t), np.asarray(e.ids, dtype=np.int32))


class CachedSource:
    """Opens passes over one source; a source whose whole pass is at most ``max_tokens`` tokens
    is kept in memory after its first pass, so cycling a small source (``all_exhausted``) does
    not re-read and re-tokenize it every time. Memory stays bounded by ``max_tokens`` per source."""

    def __init__(self, open_pass, max_tokens: int = 1_000_000) -> None:
        self._open_pass = open_pass
        self._max_tokens = max_tokens
        self._cache: list[Doc] | None = None

    def __call__(self) -> Iterator[Doc]:
        if self._cache is not None:
            return iter(self._cache)
        return self._first_pass()

    def _first_pass(self) -> Iterator[Doc]:
        kept: list[Doc] | None = []
        tokens = 0
        for doc in self._open_pass():
            if kept is not None:
                tokens += doc.num_tokens
                kept.append(doc)
                if tokens > self._max_tokens:
                    kept = None
            yield doc
        if kept is not None:
            self._cache = kept


def is_validation(seed: int, source: str, file: str, row: int, fraction: float) -> bool:
    """Seeded, order-independent split assignment of one document."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\x1f{source}\x1f{file}\x1f{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


class ConcatPacker:
    """Concatenate documents and cut rows of ``seq_len``; the tail row is padded."""

    def __init__(self, seq_len: int, pad_id: int, flush_rows: int = 512) -> None:
        self.seq_len, self.pad_id, self.flush_rows = seq_len, pad_id, flush_rows
        self._parts: list[np.ndarray] = []
        self._count = 0

    def add(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._parts.append(ids)
        self._count += len(ids)
        if self._count >= self.seq_len * self.flush_rows:
            yield self._cut(final=False)

    def finish(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._count:
            yield self._cut(final=True)

    def _cut(self, final: bool) -> tuple[np.ndarray, np.ndarray]:
        flat = np.concatenate(self._parts)
        n_full = len(flat) // self.seq_len
        rest = flat[n_full * self.seq_len :]
        rows = flat[: n_full * self.seq_len].reshape(n_full, self.seq_len)
        lengths = np.full(n_full, self.seq_len, dtype=np.int32)
        if final and len(rest):
            tail = np.full((1, self.seq_len), self.pad_id, dtype=np.int32)
            tail[0, : len(rest)] = rest
            rows, lengths = np.vstack([rows, tail]), np.append(lengths, np.int32(len(rest)))
            rest = rest[:0]
        self._parts, self._count = ([rest] if len(rest) else []), len(rest)
        return rows, lengths


class BestFitPacker:
    """Best-fit decreasing over a window of ``buffer`` pieces (see module doc)."""

    def __init__(self, seq_len: int, pad_id: int, buffer: int) -> None:
        self.seq_len, self.pad_id, self.buffer = seq_len, pad_id, buffer
        self._pieces: list[np.ndarray] = []

    def add(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(ids), self.seq_len):
            self._pieces.append(ids[start : start + self.seq_len])
        if len(self._pieces) >= self.buffer:
            yield self._pack()

    def finish(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._pieces:
            yield self._pack()

    def _pack(self) -> tuple[np.ndarray, np.ndarray]:
        pieces, self._pieces = self._pieces, []
        order = sorted(range(len(pieces)), key=lambda k: (-len(pieces[k]), k))
        bins: list[list[np.ndarray]] = []
        room: list[tuple[int, int]] = []  # sorted (free space, bin index)
        for k in order:
            piece = pieces[k]
            pos = bisect.bisect_left(room, (len(piece), -1))
            if pos < len(room):
                free, b = room.pop(pos)
            else:
                free, b = self.seq_len, len(bins)
                bins.append([])
            bins[b].append(piece)
            if free - len(piece) > 0:
                bisect.insort(room, (free - len(piece), b))
        rows = np.full((len(bins), self.seq_len), self.pad_id, dtype=np.int32)
        lengths = np.zeros(len(bins), dtype=np.int32)
        for b, content in enumerate(bins):
            flat = np.concatenate(content)
            rows[b, : len(flat)] = flat
            lengths[b] = len(flat)
        return rows, lengths


def rows_to_batch(rows: np.ndarray, lengths: np.ndarray) -> pa.RecordBatch:
    """A packed batch as Arrow (``input_ids`` list<int32>, ``length`` int32), zero-copy values."""
    n, seq_len = rows.shape
    offsets = pa.array(np.arange(0, (n + 1) * seq_len, seq_len, dtype=np.int32))
    ids = pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1), type=pa.int32()))
    return pa.RecordBatch.from_arrays([ids, pa.array(lengths, type=pa.int32())], schema=PACKED_SCHEMA)


def export_npy(shards: ShardSet, seq_len: int) -> Path:
    """Write ``tokens.npy`` (num_sequences, seq_len) int32 next to the shards, batch by batch."""
    path = shards.path / "tokens.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(shards.num_rows, seq_len))
    at = 0
    for batch in shards.iter_batches(columns=["input_ids"]):
        values = batch.column("input_ids").flatten().to_numpy(zero_copy_only=False)
        out[at : at + batch.num_rows] = values.reshape(batch.num_rows, seq_len)
        at += batch.num_rows
    out.flush()
    del out
    return path


class _Split:
    """One output split: a packer feeding a shard writer, with its counts."""

    def __init__(self, name: str, p, pad_id: int) -> None:
        self.name = name
        self.dir = staging_dir(f"xoron-packed-{name}-")
        self.writer = ShardWriter(self.dir, PACKED_SCHEMA, p.rows_per_shard)
        if p.packing == "concat":
            self.packer = ConcatPacker(p.max_seq_len, pad_id)
        else:
            self.packer = BestFitPacker(p.max_seq_len, pad_id, p.best_fit_buffer)
        self.documents = self.tokens = self.sequences = 0

    def add(self, ids: np.ndarray) -> None:
        self.documents += 1
        self.tokens += len(ids)
        for rows, lengths in self.packer.add(ids):
            self._write(rows, lengths)

    def close(self) -> ShardSet:
        for rows, lengths in self.packer.finish():
            self._write(rows, lengths)
        self.writer.close()
        return ShardSet(self.dir, staged=True)

    def _write(self, rows: np.ndarray, lengths: np.ndarray) -> None:
        self.sequences += len(rows)
        self.writer.write(rows_to_batch(rows, lengths))

    def summary(self, seq_len: int) -> dict[str, int]:
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "sequences": self.sequences,
            "padding_tokens": self.sequences * seq_len - self.tokens,
        }


#: passes over one source above which a packing warns (its weight is far above its natural share)
MAX_QUIET_PASSES = 3


def warn_repeats(report: Mapping[str, Mapping[str, float]], desc: str) -> list[str]:
    """Warn about sources read more than :data:`MAX_QUIET_PASSES` times to keep their weight (their
    documents are repeated that often); returns their names."""
    heavy = [name for name, row in report.items() if row["passes_completed"] > MAX_QUIET_PASSES]
    if heavy:
        natural = sum(row["tokens"] / max(row["passes_completed"], 1) for row in report.values())
        detail = ", ".join(
            f"{n}: {report[n]['passes_completed']} passes (weight {report[n]['target_share']:.3g}, "
            f"natural share {report[n]['tokens'] / max(report[n]['passes_completed'], 1) / natural:.3g})"
            for n in heavy
        )
        log.warning(
            "%s: sources repeated to keep their weight: %s; weights near the natural shares read each "
            "source about once",
            desc,
            detail,
        )
    return heavy


def tokenize_and_pack(
    ledger: ShardSet,
    hf_tokenizer,
    params,
    weights: Mapping[str, float] | None = None,
    cache: dict[str, CachedSource] | None = None,
    desc: str = "tokenize+pack",
    docs=source_docs,
) -> tuple[ShardSet, ShardSet, dict]:
    """Mix, tokenize, split and pack the ledger's kept documents; returns staged train / val
    shard sets and the manifest (token counts, target vs achieved source mix).

    ``weights`` (a stage mix: ``{source name: weight}``) packs only those sources, with those
    weights instead of the sources' own; ``cache`` shares the tokenized passes of small sources
    between several packings of one ledger (a source is then tokenized once); ``docs`` opens one
    pass over a source's kept documents (``(ledger, name, tokenizer, batch_size)`` -> Docs in ledger
    order: :func:`source_docs`, or the Ray engine's pre-tokenized ones)."""
    p, seed = params.packing, params.seed
    tok = hf_tokenizer.backend_tokenizer
    bos, eos, pad = hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id
    sources = params.selected_sources()
    if weights is not None:
        sources = [s for s in sources if s.name in weights]
    cache = {} if cache is None else cache
    for s in sources:
        if s.name not in cache:
            cache[s.name] = CachedSource(lambda n=s.name: docs(ledger, n, tok, p.preprocess_batch_size))
    mix_sources = [
        MixSource(
            name=s.name,
            weight=s.weight if weights is None else weights[s.name],
            open=cache[s.name],
            sample_repeat=s.sample_repeat,
            max_per_epoch=s.max_per_epoch,
        )
        for s in sources
    ]
    mixer = WeightedMixer(mix_sources, params.mixing.stopping_strategy, params.mixing.max_per_epoch)
    splits = {"train": _Split("train", p, pad), "val": _Split("val", p, pad)}
    chars = 0
    started = time.perf_counter()
    bar = tqdm(desc=desc, unit="tok", unit_scale=True, disable=not params.progress)
    for i, doc in mixer:
        name = sources[i].name
        split = "val" if is_validation(seed, name, doc.file, doc.row, p.preprocess_validation_fraction) else "train"
        ids = np.empty(len(doc.ids) + 2, dtype=np.int32)
        ids[0], ids[1:-1], ids[-1] = bos, doc.ids, eos
        splits[split].add(ids)
        chars += doc.num_chars
        bar.update(len(ids))
    bar.close()
    train, val = splits["train"].close(), splits["val"].close()
    elapsed = time.perf_counter() - started
    if p.export_npy:
        export_npy(train, p.max_seq_len)
        export_npy(val, p.max_seq_len)
    content_tokens = sum(s.tokens for s in mixer.sources)
    manifest = {
        "max_seq_len": p.max_seq_len,
        "packing": p.packing,
        "seed": seed,
        "preprocess_validation_fraction": p.preprocess_validation_fraction,
        "stopping_strategy": params.mixing.stopping_strategy,
        "special_ids": {"bos": bos, "eos": eos, "pad": pad},
        "vocab_size": len(hf_tokenizer),
        "schema": {"input_ids": "list<int32>, max_seq_len ids per row", "length": "int32, real ids; rest is pad"},
        "splits": {k: v.summary(p.max_seq_len) for k, v in splits.items()},
        "sources": mixer.report(),
        "chars_per_token": chars / content_tokens if content_tokens else 0.0,
        "tokens_per_second": (content_tokens + 2 * sum(v.documents for v in splits.values())) / elapsed
        if elapsed
        else 0.0,
        "npy": ["tokens.npy"] if p.export_npy else [],
    }
    warn_repeats(manifest["sources"], desc)
    if p.preprocess_validation_fraction > 0 and splits["val"].documents == 0:
        log.warning(
            "validation split is empty (fraction %s, %d documents)",
            p.preprocess_validation_fraction,
            splits["train"].documents,
        )
    log.info("packed %s", manifest["splits"])
    return train, val, manifest
