"""Parquet shard directories passed lazily between nodes.

A *shard set* is a directory of ``part-00000.parquet, part-00001.parquet, ...`` files (plus,
optionally, side files such as ``tokens.npy``). Nodes never hold a whole corpus in memory: they
write record batches through a :class:`ShardWriter` into a *staging* directory and return a
:class:`ShardSet` handle; :class:`ParquetShardsDataset` then moves the staged directory into
place atomically (the old directory is swapped out by renames, never left half-written).
Loading returns a :class:`ShardSet` too, which reads batches on demand.

Catalog use::

    packed_train:
      type: xoron_pipelines.datasets.parquet_shards.ParquetShardsDataset
      path: data/05_model_input/packed/train

:class:`PackedMixesDataset` holds several named train / val pairs (the stage mixes of
``data_processing.stage_mixes``) under one root: ``<root>/<mix>/{train,val}``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, DatasetError

PART_GLOB = "part-*.parquet"


class ShardSet:
    """A lazy handle on a directory of Parquet shards (nothing is read until asked)."""

    def __init__(self, path: str | os.PathLike, staged: bool = False) -> None:
        self.path = Path(path)
        #: True when the directory is a temporary staging area a dataset may move into place.
        self.staged = staged

    @property
    def files(self) -> list[Path]:
        return sorted(self.path.glob(PART_GLOB))

    def dataset(self) -> pads.Dataset:
        """The shards as one ``pyarrow.dataset.Dataset`` (filters / projections are lazy)."""
        return pads.dataset([str(f) for f in self.files], format="parquet")

    @property
    def num_rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    def iter_batches(
        self, columns: list[str] | None = None, filter: Any = None, batch_size: int = 4096
    ) -> Iterator[pa.RecordBatch]:
        """Record batches in shard order (row order is preserved)."""
        if not self.files:
            return iter(())
        scanner = self.dataset().scanner(
            columns=columns, filter=filter, batch_size=batch_size, use_threads=False,
            batch_readahead=1, fragment_readahead=1,  # bounded memory whatever the shard count
        )
        return (b for b in scanner.to_batches() if b.num_rows)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The whole shard set as one table (for small data and tests only)."""
        if not self.files:
            raise DatasetError(f"no Parquet shards under {self.path}")
        return self.dataset().to_table(columns=columns)

    def __repr__(self) -> str:
        return f"ShardSet({str(self.path)!r}, staged={self.staged})"


def staging_dir(prefix: str = "xoron-shards-") -> Path:
    """A fresh temporary directory for a node to write shards into."""
    return Path(tempfile.mkdtemp(prefix=prefix))


class ShardWriter:
    """Write record batches as ``part-NNNNN.parquet`` files of at most ``rows_per_shard`` rows.

    Batches are buffered only up to ``rows_per_shard`` rows, so memory stays bounded whatever the
    total size. Use as a context manager; :meth:`close` flushes the last shard.
    """

    def __init__(self, directory: str | os.PathLike, schema: pa.Schema, rows_per_shard: int = 100_000) -> None:
        if rows_per_shard < 1:
            raise ValueError("rows_per_shard must be >= 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.num_rows = 0
        self.num_shards = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        table = table.cast(self.schema) if table.schema != self.schema else table
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                path = self.directory / f"part-{self.num_shards:05d}.parquet"
                self._writer = pq.ParquetWriter(str(path), self.schema)
                self.num_shards += 1
            take = min(self.rows_per_shard - self._rows_in_shard, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take))
            offset += take
            self._rows_in_shard += take
            self.num_rows += take
            if self._rows_in_shard >= self.rows_per_shard:
                self._close_shard()

    def write_rows(self, rows: dict[str, list]) -> None:
        """Write a column dict (``{name: values}``) as one batch."""
        if rows and len(next(iter(rows.values()))):
            self.write(pa.Table.from_pydict(rows, schema=self.schema))

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._rows_in_shard = 0

    def close(self) -> None:
        self._close_shard()
        if self.num_shards == 0:  # an empty set still has its schema on disk
            pq.write_table(self.schema.empty_table(), str(self.directory / "part-00000.parquet"))
            self.num_shards = 1

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replace_dir(src: Path, dst: Path, move: bool) -> None:
    """Put directory ``src`` at ``dst`` atomically: build a sibling temp dir, then swap by renames."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    if move:
        shutil.move(str(src), str(tmp))
    else:
        shutil.copytree(src, tmp)
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


class ParquetShardsDataset(AbstractDataset[Any, ShardSet]):
    """A directory of Parquet shards. ``load`` -> :class:`ShardSet`; ``save`` accepts a
    :class:`ShardSet` (a staged one is moved, any other copied), a ``pyarrow.Table``, or an
    iterable of record batches / tables (streamed through a :class:`ShardWriter`)."""

    def __init__(self, path: str, rows_per_shard: int = 100_000, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self._rows_per_shard = rows_per_shard
        self.metadata = metadata

    def load(self) -> ShardSet:
        if not self._path.is_dir():
            raise DatasetError(f"shard directory {self._path} does not exist")
        return ShardSet(self._path)

    def save(self, data: Any) -> None:
        if isinstance(data, ShardSet):
            if data.path.resolve() != self._path.resolve():
                replace_dir(data.path, self._path, move=data.staged)
            return
        if isinstance(data, (pa.Table, pa.RecordBatch)):
            data = [data]
        batches = iter(data)
        first = next(batches, None)
        if first is None:
            raise DatasetError("ParquetShardsDataset.save got no batches (the schema is unknown)")
        stage = staging_dir()
        with ShardWriter(stage, first.schema, self._rows_per_shard) as writer:
            writer.write(first)
            for batch in batches:
                writer.write(batch)
        replace_dir(stage, self._path, move=True)

    def _exists(self) -> bool:
        return self._path.is_dir() and any(self._path.glob(PART_GLOB))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path)), "rows_per_shard": self._rows_per_shard}


SPLITS = ("train", "val")


class PackedMixes:
    """Lazy view of ``<root>/<mix>/{train,val}``: ``mixes["code"]`` -> ``{"train": ShardSet, "val": ShardSet}``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        """The mixes that have both splits, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if all((p / split).is_dir() for split in SPLITS))

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __getitem__(self, name: str) -> dict[str, ShardSet]:
        if name not in self:
            raise DatasetError(f"no packed mix {name!r} under {self.root} (packed: {self.names()}); add it to "
                               "data_processing.stage_mixes and run the data_processing pipeline")
        return {split: ShardSet(self.root / name / split) for split in SPLITS}


class PackedMixesDataset(AbstractDataset[Any, PackedMixes]):
    """Named train / val shard sets under one root. ``save({mix: {"train": ShardSet, "val": ShardSet}})``
    replaces the whole root atomically (mixes no longer configured disappear); ``load`` ->
    :class:`PackedMixes`, lazy, so a pipeline that uses no mix never needs one."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> PackedMixes:
        return PackedMixes(self._path)

    def save(self, data: Mapping[str, Mapping[str, ShardSet]]) -> None:
        stage = staging_dir("xoron-packed-mixes-")
        try:
            for name, splits in data.items():
                if set(splits) != set(SPLITS):
                    raise DatasetError(f"packed mix {name!r} needs exactly the splits {SPLITS}, got {sorted(splits)}")
                for split, shards in splits.items():
                    ParquetShardsDataset(str(stage / name / split)).save(shards)  # moved if staged, else copied
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        replace_dir(stage, self._path, move=True)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}


def iter_rows(batches: Iterable[pa.RecordBatch]) -> Iterator[dict[str, Any]]:
    """Rows (dicts) of record batches, one batch in memory at a time."""
    for batch in batches:
        yield from batch.to_pylist()
