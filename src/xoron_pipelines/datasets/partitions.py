"""``LabelledPartitionedDataset``: a ``partitions.PartitionedDataset`` whose partitions also say
which file they are.

``load`` returns ``{partition id: Partition}``; a :class:`Partition` is called like the plain
dataset's load function (``partition()`` -> the partition's data, read lazily) and carries
``file``: the partition's path, relative to the working directory when it lies below it (Kedro
runs in the project root, so ``data/01_raw/synth/chat.jsonl``: the label does not depend on where
the project lies), absolute otherwise.
``data_processing`` names the records of a ``format: synth`` source by it::

    synth_raw:
      type: xoron_pipelines.datasets.partitions.LabelledPartitionedDataset
      path: data/01_raw/synth
      dataset:
        type: xoron_pipelines.datasets.jsonl.JSONLinesDataset
      filename_suffix: ".jsonl"
      missing_ok: true

``missing_ok: true``: with no partition at all (the folder absent or empty: synth has not run)
``load`` returns an empty mapping instead of raising (:class:`NoPartitions`, holding the error a
plain load raises), and each reader names what it lacks.
``data_processing`` reads ``synth_raw`` only for its ``format: synth`` sources, so it runs on
one's own corpus without the synth pipeline (Kedro's DAG is static: the input stays, and keeps
synth before data_processing in a full run).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kedro.io import DatasetError
from kedro_datasets.partitions import PartitionedDataset


class Partition:
    """One partition: ``partition()`` loads it; ``file`` names it (path as configured); ``path``
    is where it lies (absolute), for a reader that goes line by line."""

    def __init__(self, load: Callable[[], Any], file: str, path: Path | None = None) -> None:
        self._load = load
        self.file = file
        self.path = path

    def __call__(self) -> Any:
        return self._load()

    def __repr__(self) -> str:
        return f"Partition({self.file!r})"


class NoPartitions(dict):
    """The (empty) load of a ``missing_ok`` dataset that has no partition; ``error`` is the
    ``DatasetError`` (caused by ``FileNotFoundError`` naming the folder) a reader that needs
    partitions can raise."""

    def __init__(self, error: DatasetError) -> None:
        super().__init__()
        self.error = error


class LabelledPartitionedDataset(PartitionedDataset):
    """:class:`PartitionedDataset` whose ``load`` gives each partition its configured path;
    ``missing_ok``: no partition loads as ``{}`` (else it is an error). Other arguments: those of
    ``PartitionedDataset``."""

    def __init__(self, *args: Any, missing_ok: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._missing_ok = missing_ok

    def load(self) -> dict[str, Partition] | NoPartitions:
        """The partitions; when there are none, ``{}`` with ``missing_ok``, else raises
        ``DatasetError`` caused by ``FileNotFoundError`` (naming the folder), like a single-file
        dataset whose file is missing."""
        root = _relative_to_cwd(str(self._path).rstrip("/"))
        if not self._list_partitions_fresh():
            error = DatasetError(f"No partitions found in '{root}'")
            error.__cause__ = FileNotFoundError(errno.ENOENT, "no partitions", root)
            if self._missing_ok:
                return NoPartitions(error)
            raise error
        base = Path(str(self._path).rstrip("/")).absolute()
        return {
            pid: Partition(load, f"{root}/{pid}{self._filename_suffix}", base / f"{pid}{self._filename_suffix}")
            for pid, load in super().load().items()
        }

    def _list_partitions_fresh(self) -> list[str]:
        self._invalidate_caches()
        return self._list_partitions()


def _relative_to_cwd(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (Kedro's catalog makes
    the configured relative paths absolute), else unchanged."""
    try:
        return Path(path).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path
