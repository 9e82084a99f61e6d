"""The embedding cache on disk: shards + an offsets index, written and read here.

One cache *split* is a directory::

    part-00000.parquet, part-00001.parquet, ...   rows, in input order (``format: parquet``: zstd,
                                                    row groups of ``row_group_rows`` rows;
    part-00000.jsonl, ...                           ``format: jsonl``: one JSON object per row)
    offsets.npy                                     int64 (num_rows, 3): parquet: shard, row_group,
                                                    row; jsonl: shard, byte offset, byte length
                                                    (only with cache_write_offsets_index)
    meta.json                                       num_rows, shards, format, columns, schema,
                                                    embedding facts, plus whatever the writer was given

A *subset* (:class:`CacheSubset`) is a directory of splits plus ``manifest.json``.

Random access (:meth:`EmbeddingCache.__getitem__`) looks the row up in ``offsets.npy``
(memory-mapped) and reads only what holds it: the one Parquet row group, or the one JSON line.
Without the index the same triples are rebuilt when the cache is opened (Parquet footers, or a
scan of the JSON lines). Both formats read back through the stored Arrow schema, so a row is the
same whichever format holds it.

Embedding columns: ``embedding`` is ``list<int8>`` with ``embedding_scale`` (``float32`` per
row for mean pooling, ``list<float32>`` per token for per-token states) when int8, else
``list<float32>`` and no scale. Per-token states are flattened row-major ``(num_tokens, dim)``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from xoron_pipelines.atomic import atomic_open

OFFSETS_FILE = "offsets.npy"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
FORMATS = ("parquet", "jsonl")


def fingerprint(parts: dict[str, Any]) -> str:
    """sha256 of a canonical JSON rendering of ``parts`` (the cache's identity)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then ``os.replace``)."""
    with atomic_open(path) as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)


def embedding_fields(int8: bool, pooling: str) -> list[pa.Field]:
    """Schema fields of the embedding columns (see module docstring)."""
    if not int8:
        return [pa.field("embedding", pa.list_(pa.float32()))]
    scale = pa.float32() if pooling == "mean" else pa.list_(pa.float32())
    return [pa.field("embedding", pa.list_(pa.int8())), pa.field("embedding_scale", scale)]


class CacheWriter:
    """Append rows (column dicts) into Parquet shards of ``rows_per_shard`` rows, each made of
    row groups of ``row_group_rows`` rows; :meth:`close` writes ``offsets.npy`` and ``meta.json``."""

    def __init__(
        self,
        directory: str | os.PathLike,
        schema: pa.Schema,
        rows_per_shard: int = 8192,
        row_group_rows: int = 256,
        write_offsets: bool = True,
        fmt: str = "parquet",
    ) -> None:
        if rows_per_shard < 1 or row_group_rows < 1:
            raise ValueError("rows_per_shard and row_group_rows must be >= 1")
        if fmt not in FORMATS:
            raise ValueError(f"cache format {fmt!r}: expected one of {FORMATS}")
        self.fmt = fmt
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.row_group_rows = min(row_group_rows, rows_per_shard)
        self.write_offsets = write_offsets
        self.num_rows = 0
        self.shards: list[str] = []
        self._writer: pq.ParquetWriter | io.BufferedWriter | None = None
        self._jsonl_offsets: list[tuple[int, int, int]] = []
        self._in_shard = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write_rows(self, columns: dict[str, list]) -> None:
        """Buffer one column dict; full row groups are written as they fill."""
        table = pa.Table.from_pydict(columns, schema=self.schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._group_size():
            self._flush(self._group_size())

    def _group_size(self) -> int:
        """Rows of the next row group: a full group, or what is left of the current shard."""
        return min(self.row_group_rows, self.rows_per_shard - self._in_shard)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self._pending)
        group, rest = table.slice(0, n), table.slice(n)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if self._writer is None:
            name = f"part-{len(self.shards):05d}.{self.fmt}"
            path = str(self.directory / name)
            self._writer = (
                pq.ParquetWriter(path, self.schema, compression="zstd") if self.fmt == "parquet" else open(path, "wb")
            )
            self.shards.append(name)
        if self.fmt == "parquet":
            self._writer.write_table(group, row_group_size=n)
        else:
            for record in group.to_pylist():
                line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
                self._jsonl_offsets.append((len(self.shards) - 1, self._writer.tell(), len(line)))
                self._writer.write(line)
        self._in_shard += n
        self.num_rows += n
        if self._in_shard >= self.rows_per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer, self._in_shard = None, 0

    def close(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Flush, write the offsets index and ``meta.json`` (``meta`` plus layout facts)."""
        while self._pending_rows:
            self._flush(min(self._pending_rows, self._group_size()))
        self._close_shard()
        if not self.shards:  # an empty split still records its schema
            self.shards.append(f"part-00000.{self.fmt}")
            if self.fmt == "parquet":
                pq.write_table(self.schema.empty_table(), str(self.directory / self.shards[0]))
            else:
                (self.directory / self.shards[0]).write_bytes(b"")
        files = [self.directory / s for s in self.shards]
        if self.write_offsets:
            offsets = (
                offsets_from_footers(files)
                if self.fmt == "parquet"
                else np.asarray(self._jsonl_offsets, dtype=np.int64).reshape(-1, 3)
            )
            np.save(self.directory / OFFSETS_FILE, offsets)
        full = {
            **meta,
            "format_version": FORMAT_VERSION,
            "format": self.fmt,
            "num_rows": self.num_rows,
            "shards": self.shards,
            "columns": self.schema.names,
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
            "row_group_rows": self.row_group_rows,
            "offsets_index": OFFSETS_FILE if self.write_offsets else None,
        }
        write_json(self.directory / META_FILE, full)
        return full

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_shard()


def offsets_from_lines(files: list[Path]) -> np.ndarray:
    """(num_rows, 3) int64 triples shard, byte offset, byte length of every JSON line."""
    triples = []
    for s, file in enumerate(files):
        pos = 0
        with open(file, "rb") as fh:
            for line in fh:
                triples.append((s, pos, len(line)))
                pos += len(line)
    return np.asarray(triples, dtype=np.int64).reshape(-1, 3)


def offsets_from_footers(files: list[Path]) -> np.ndarray:
    """(num_rows, 3) int64 triples shard, row_group, row-in-group, from the Parquet footers."""
    parts = []
    for s, file in enumerate(files):
        meta = pq.ParquetFile(str(file)).metadata
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            parts.append(np.stack([np.full(n, s), np.full(n, g), np.arange(n)], axis=1))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 3), dtype=np.int64)


class EmbeddingCache:
    """Reader of one cache split: ``len``, random access ``cache[i]`` and bulk reads.

    ``cache[i]`` returns a dict of the stored columns for row ``i`` with numpy arrays for list
    columns and ``embedding`` dequantised to float32 (shape ``(dim,)`` for mean pooling,
    ``(num_tokens, dim)`` for per-token states); the raw int8 values stay available as
    ``embedding_int8`` next to ``embedding_scale``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_file = self.path / META_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"no embedding cache at {self.path} ({META_FILE} missing)")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
        self.files = [self.path / s for s in self.meta["shards"]]
        self.format = self.meta.get("format", "parquet")
        self.schema = (
            pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.meta["schema"]))) if "schema" in self.meta else None
        )
        index = self.path / OFFSETS_FILE
        rebuild = offsets_from_footers if self.format == "parquet" else offsets_from_lines
        self.offsets = np.load(index, mmap_mode="r") if index.is_file() else rebuild(self.files)
        self.dim = int(self.meta["embedding"]["dim"])
        self._group_key: tuple[int, int] | None = None
        self._group: pa.Table | None = None

    def __len__(self) -> int:
        return int(self.meta["num_rows"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for a cache of {n} rows")
        shard, group, row = (int(x) for x in self.offsets[i % n])
        if self.format == "jsonl":  # group = byte offset, row = byte length of the line
            with open(self.files[shard], "rb") as fh:
                fh.seek(group)
                return self.decode(self._json_table(fh.read(row)).to_pylist()[0])
        if self._group_key != (shard, group):
            self._group = pq.ParquetFile(str(self.files[shard])).read_row_group(group)
            self._group_key = (shard, group)
        return self.decode(self._group.slice(row, 1).to_pylist()[0])

    def decode(self, record: dict[str, Any]) -> dict[str, Any]:
        """Numpy arrays for list columns; ``embedding`` as float32 (dequantised when int8)."""
        out: dict[str, Any] = {}
        for key, value in record.items():
            out[key] = np.asarray(value) if isinstance(value, list) else value
        emb = np.asarray(record["embedding"], dtype=np.int8 if "embedding_scale" in record else np.float32)
        emb = emb.reshape(-1, self.dim) if self.meta["embedding"]["pooling"] == "tokens" else emb
        if "embedding_scale" in record:
            scale = np.asarray(record["embedding_scale"], dtype=np.float32)
            out["embedding_int8"], out["embedding_scale"] = emb, scale
            emb = emb.astype(np.float32) * scale[..., None] if emb.ndim == 2 else emb.astype(np.float32) * scale
        out["embedding"] = emb
        return out

    def _json_table(self, data: bytes) -> pa.Table:
        """JSON lines -> a table of the stored schema (the same types the Parquet shards hold)."""
        if not data:
            return self.schema.empty_table()
        opts = pa_json.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="error")
        return pa_json.read_json(io.BytesIO(data), parse_options=opts).select(self.schema.names).cast(self.schema)

    def _tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Each shard as a table, in order."""
        for f in self.files:
            if self.format == "parquet":
                yield pq.read_table(str(f), columns=columns)
            else:
                table = self._json_table(f.read_bytes())
                yield table.select(columns) if columns is not None else table

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The whole split as one table, rows in order (small caches and tests)."""
        return pa.concat_tables(self._tables(columns))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for table in self._tables():
            for batch in table.to_batches():
                for record in batch.to_pylist():
                    yield self.decode(record)

    def embeddings(self) -> np.ndarray:
        """All mean-pooled embeddings as float32 ``(num_rows, dim)`` (mean pooling only)."""
        if self.meta["embedding"]["pooling"] != "mean":
            raise ValueError("embeddings() needs mean pooling; iterate rows for per-token states")
        cols = ["embedding", "embedding_scale"] if self.meta["embedding"]["dtype"] == "int8" else ["embedding"]
        table = self.read(cols)
        values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        emb = values.reshape(len(self), self.dim).astype(np.float32)
        if "embedding_scale" in cols:
            emb *= table.column("embedding_scale").to_numpy()[:, None]
        return emb

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, rows={len(self)})"


class CacheSubset:
    """One subset (``pairs`` / ``pretrain``): its manifest and a reader per split (a lazy handle:
    nothing but the manifest and ``meta.json`` files is read until rows are asked for)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST_FILE
        if not manifest.is_file():
            raise FileNotFoundError(
                f"no embedding cache at {self.path} ({MANIFEST_FILE} missing); "
                "run `kedro run --pipeline embedding_cache`"
            )
        self.manifest: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
        self.splits = {s: EmbeddingCache(self.path / s) for s in self.manifest["splits"]}

    @property
    def train(self) -> EmbeddingCache:
        return self.splits["train"]

    @property
    def val(self) -> EmbeddingCache:
        return self.splits["val"]

    @property
    def test(self) -> EmbeddingCache | None:
        """The test split when the source had one, else None."""
        return self.splits.get("test")

    def quarantine(self) -> list[dict[str, Any]]:
        """Rows that were not encoded, with their reason."""
        path = self.path / self.manifest["quarantine"]
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def __repr__(self) -> str:
        return f"CacheSubset({str(self.path)!r}, {', '.join(f'{k}={len(v)}' for k, v in self.splits.items())})"
