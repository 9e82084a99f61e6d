"""``AtomicJSONDataset``: a JSON file replaced atomically (written beside it, then renamed over it).

A reader sees the old document or the new one, never a truncated one, and a failed or killed
save leaves the old file intact (Kedro's ``json.JSONDataset`` truncates the file, then writes).
The file follows the user's umask.

Catalog use::

    packing_manifest:
      type: xoron_pipelines.datasets.json_file.AtomicJSONDataset
      filepath: data/05_model_input/packing_manifest.json
      indent: 2
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_open


class AtomicJSONDataset(AbstractDataset[Any, Any]):
    """``load`` -> the parsed document; ``save(obj)`` -> ``json.dump`` to a sibling temp file, fsync, rename."""

    def __init__(self, filepath: str, indent: int | None = 2, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(filepath).removeprefix("file://"))
        self._indent = indent
        self.metadata = metadata

    def load(self) -> Any:
        if not self._path.is_file():
            raise DatasetError(f"no JSON file at {self._path}")
        return json.loads(self._path.read_text(encoding="utf-8"))

    def save(self, data: Any) -> None:
        with atomic_open(self._path) as fh:
            json.dump(data, fh, indent=self._indent)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _exists(self) -> bool:
        return self._path.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._path)), "indent": self._indent}
