"""``ExportDirectoryDataset``: one exported format's directory (``hf/``, ``gguf/``, ``onnx/``,
``lora_adapter/``), published atomically.

The export node builds each format in a staging directory and returns an :class:`ExportedArtifact`;
``save`` swaps its content into ``path`` in one step (:func:`~xoron_pipelines.atomic.atomic_dir`:
a reader sees the previous export or the new one, never a mix; a failed save leaves the previous
one). An artefact whose ``path`` is None (the format is not in ``export.formats``, or the stage
trained no LoRA adapter) leaves ``path`` as it is. An artefact built for another directory
(``target``, from ``export.output_dir``) is refused, naming both, so the manifest never points
somewhere the files are not. ``load`` returns the directory (``pathlib.Path``).

Catalog use::

    export_hf:
      type: xoron_pipelines.datasets.export.ExportDirectoryDataset
      path: data/07_model_output/export/hf
      marker: config.json        # _exists() looks for it (optional)
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportedArtifact:
    """A format's directory as built by the export node.

    ``path``: the staged directory (moved into place by the dataset, then removed), or None when
    nothing is to be published (``reason`` says why). ``target``: the directory the node meant
    (``<export.output_dir>/<name>``, as the manifest records it); None accepts any."""

    path: Path | None
    target: Path | None = None
    reason: str | None = None


class ExportDirectoryDataset(AbstractDataset[ExportedArtifact, Path]):
    """A directory written whole by the export node; see the module docstring."""

    def __init__(self, path: str, marker: str | None = None, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self._marker = marker
        self.metadata = metadata

    def load(self) -> Path:
        if not self._exists():
            raise DatasetError(
                f"no export at {self._path}"
                + (f" ({self._marker} missing)" if self._marker else "")
                + "; run kedro run --pipeline export"
            )
        return self._path

    def save(self, data: ExportedArtifact) -> None:
        if not isinstance(data, ExportedArtifact):
            raise DatasetError(f"ExportDirectoryDataset.save expects an ExportedArtifact, got {type(data).__name__}")
        if data.path is None:
            logger.info("nothing exported to %s (%s); left as it is", self._path, data.reason or "not requested")
            return
        if data.target is not None and Path(data.target).resolve() != self._path.resolve():
            raise DatasetError(
                f"export built for {data.target} (export.output_dir) but this catalog entry writes "
                f"{self._path}: set export.output_dir on the command line (--params "
                f"export.output_dir=DIR) or in conf/base/globals.yml (export_output_dir), which "
                f"the catalog's export_* entries follow"
            )
        staged = Path(data.path)
        with atomic_dir(self._path) as new:
            for item in staged.iterdir():
                shutil.move(str(item), new / item.name)  # a rename on the same filesystem
        shutil.rmtree(staged, ignore_errors=True)

    def _exists(self) -> bool:
        return self._path.is_dir() and (self._marker is None or (self._path / self._marker).exists())

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path)), "marker": self._marker}


__all__ = ["ExportDirectoryDataset", "ExportedArtifact"]
