"""``HFTokenizerDataset``: a Hugging Face tokenizer directory.

``load`` -> ``transformers.AutoTokenizer.from_pretrained(path)`` (local files only);
``save`` -> ``save_pretrained`` into a temporary sibling directory, then swapped into place by
renames so a reader never sees a half-written tokenizer.

Catalog use::

    tokenizer:
      type: xoron_pipelines.datasets.tokenizer.HFTokenizerDataset
      path: data/05_model_input/tokenizer
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.datasets.parquet_shards import replace_dir


class HFTokenizerDataset(AbstractDataset[Any, Any]):
    """A tokenizer saved with ``save_pretrained`` and loaded with ``AutoTokenizer``."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> Any:
        from transformers import AutoTokenizer

        if not (self._path / "tokenizer.json").is_file():
            raise DatasetError(f"no tokenizer at {self._path} (tokenizer.json missing)")
        return AutoTokenizer.from_pretrained(str(self._path), local_files_only=True)

    def save(self, data: Any) -> None:
        if not hasattr(data, "save_pretrained"):
            raise DatasetError(f"HFTokenizerDataset.save expects a transformers tokenizer, got {type(data).__name__}")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{self._path.name}.", dir=self._path.parent))
        data.save_pretrained(str(stage))
        replace_dir(stage, self._path, move=True)

    def _exists(self) -> bool:
        return (self._path / "tokenizer.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}
