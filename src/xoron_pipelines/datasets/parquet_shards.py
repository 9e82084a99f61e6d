"""Parquet shard directories passed lazily between nodes.

A *shard set* is a directory of ``part-00000.parquet, part-00001.parquet, ...`` files (plus,
optionally, side files such as ``tokens.npy``). Nodes never hold a whole corpus in memory: they
write record batches through a :class:`ShardWriter` into a *staging* directory and return a
:class:`ShardSet` handle; :class:`ParquetShardsDataset` then moves the staged directory into
place atomically (:func:`~xoron_pipelines.atomic.atomic_dir`: built as a hidden
sibling, exchanged with the old directory in one step, so the path never disappears and is never
half-written). Loading returns a :class:`ShardSet` too, which reads batches on demand.

A shard set may carry a data *generation* id (:mod:`xoron_pipelines.datasets.generation`): saving
it writes ``_generation.json`` into the published directory, loading reads it back.

Catalog use::

    packed_train:
      type: xoron_pipelines.datasets.parquet_shards.ParquetShardsDataset
      path: data/05_model_input/packed/train

:class:`PackedMixesDataset` holds several named train / val pairs (the stage mixes of
``data_processing.stage_mixes``) under one root: ``<root>/<mix>/{train,val}``.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_dir, default_permissions, fresh_dir
from xoron_pipelines.datasets.generation import read_marker, staging_root, write_marker

PART_GLOB = "part-*.parquet"


class ShardSet:
    """A lazy handle on a directory of Parquet shards (nothing is read until asked)."""

    def __init__(self, path: str | os.PathLike, staged: bool = False, generation: str | None = None) -> None:
        self.path = Path(path)
        #: True when the directory is a temporary staging area a dataset may move into place.
        self.staged = staged
        self._generation = generation

    @property
    def generation(self) -> str | None:
        """The data generation: the one given (a staged set about to be published), else the
        ``_generation.json`` marker of the directory, else None (no marker)."""
        return self._generation if self._generation is not None else read_marker(self.path)

    @generation.setter
    def generation(self, value: str | None) -> None:
        self._generation = value

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
            columns=columns,
            filter=filter,
            batch_size=batch_size,
            use_threads=False,
            batch_readahead=1,
            fragment_readahead=1,  # bounded memory whatever the shard count
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
    """A fresh directory for a node to write shards into, under
    :func:`~xoron_pipelines.datasets.generation.staging_root` (``data/.staging/<run>`` during a
    ``kedro run``: same filesystem as the outputs, removed when the run ends), with the user's umask."""
    return fresh_dir(staging_root(), prefix)


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

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fill_from(target: Path, src: Path, move: bool) -> None:
    """Put the contents of directory ``src`` into the empty directory ``target``: a rename when ``move``
    and both are on one filesystem, else a copy (``src`` is then removed when ``move``). The
    directory itself gets the user's umask whatever mode ``src`` had."""
    renamed = False
    if move:
        try:
            os.rename(src, target)  # replaces the empty directory
            renamed = True
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    if not renamed:
        shutil.copytree(src, target, dirs_exist_ok=True)
        if move:
            shutil.rmtree(src, ignore_errors=True)
    default_permissions(target)  # src may come from mkdtemp (0700)


def replace_dir(src: Path, dst: Path, move: bool, generation: str | None = None) -> None:
    """Put directory ``src`` at ``dst`` atomically (moved when ``move``, else copied), with a
    ``_generation.json`` marker when ``generation`` is given; on failure ``dst`` is untouched and
    no staging directory is left."""
    with atomic_dir(dst) as tmp_dir:
        fill_from(tmp_dir, Path(src), move)
        if generation is not None:
            write_marker(tmp_dir, generation)


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
                replace_dir(data.path, self._path, move=data.staged, generation=data.generation)
            return
        if isinstance(data, (pa.Table, pa.RecordBatch)):
            data = [data]
        batches = iter(data)
        first = next(batches, None)
        if first is None:
            raise DatasetError("ParquetShardsDataset.save got no batches (the schema is unknown)")
        with atomic_dir(self._path) as tmp_dir, ShardWriter(tmp_dir, first.schema, self._rows_per_shard) as writer:
            writer.write(first)
            for batch in batches:
                writer.write(batch)

    def _exists(self) -> bool:
        return self._path.is_dir() and any(self._path.glob(PART_GLOB))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path)), "rows_per_shard": self._rows_per_shard}


SPLITS = ("train", "val")


class PackedMixes:
    """Lazy view of ``<root>/<mix>/{train,val}``: ``mixes["code"]`` -> ``{"train": ShardSet, "val": ShardSet}``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def generation(self) -> str | None:
        """The generation of the whole set of mixes (``<root>/_generation.json``), None without one."""
        return read_marker(self.root) if self.root.is_dir() else None

    def names(self) -> list[str]:
        """The mixes that have both splits, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if all((p / split).is_dir() for split in SPLITS))

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __getitem__(self, name: str) -> dict[str, ShardSet]:
        if name not in self:
            raise DatasetError(
                f"no packed mix {name!r} under {self.root} (packed: {self.names()}); add it to "
                "data_processing.stage_mixes and run the data_processing pipeline"
            )
        return {split: ShardSet(self.root / name / split) for split in SPLITS}


class PackedMixesDataset(AbstractDataset[Any, PackedMixes]):
    """Named train / val shard sets under one root. ``save({mix: {"train": ShardSet, "val": ShardSet}})``
    replaces the whole root atomically (mixes no longer configured disappear), with the shard
    sets' common generation marker at the root and in each split; ``load`` ->
    :class:`PackedMixes`, lazy, so a pipeline that uses no mix never needs one."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> PackedMixes:
        return PackedMixes(self._path)

    def save(self, data: Mapping[str, Mapping[str, ShardSet]]) -> None:
        for name, splits in data.items():
            if set(splits) != set(SPLITS):
                raise DatasetError(f"packed mix {name!r} needs exactly the splits {SPLITS}, got {sorted(splits)}")
        generations = {s.generation for splits in data.values() for s in splits.values()}
        if len(generations) > 1:
            raise DatasetError(
                f"packed mixes of different data generations {sorted(map(str, generations))}: "
                f"refusing to publish them together at {self._path}"
            )
        generation = next(iter(generations), None)
        with atomic_dir(self._path) as tmp_dir:
            for name, splits in data.items():
                for split, shards in splits.items():
                    ParquetShardsDataset(str(tmp_dir / name / split)).save(shards)  # moved if staged, else copied
            if generation is not None:
                write_marker(tmp_dir, generation)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}


def iter_rows(batches: Iterable[pa.RecordBatch]) -> Iterator[dict[str, Any]]:
    """Rows (dicts) of record batches, one batch in memory at a time."""
    for batch in batches:
        yield from batch.to_pylist()
