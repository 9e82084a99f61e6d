"""``HFTokenizerDataset``: a Hugging Face tokenizer directory.

``load`` -> ``transformers.AutoTokenizer.from_pretrained(path)`` (local files only), with the
directory's data generation attached (:func:`~xoron_pipelines.datasets.generation.generation_of`);
``save`` -> ``save_pretrained`` into a hidden sibling directory plus ``_generation.json`` (every
save starts a new data generation: whatever is packed with this tokenizer carries its id), then
exchanged with the old directory in one step, so a reader never sees a half-written or missing
tokenizer.

Catalog use::

    tokenizer:
      type: xoron_pipelines.datasets.tokenizer.HFTokenizerDataset
      path: data/05_model_input/tokenizer
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_dir
from xoron_pipelines.datasets.generation import attach_generation, new_generation_id, read_marker, write_marker


class HFTokenizerDataset(AbstractDataset[Any, Any]):
    """A tokenizer saved with ``save_pretrained`` and loaded with ``AutoTokenizer``."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> Any:
        from transformers import AutoTokenizer

        if not (self._path / "tokenizer.json").is_file():
            raise DatasetError(f"no tokenizer at {self._path} (tokenizer.json missing)")
        generation = read_marker(self._path)
        tokenizer = AutoTokenizer.from_pretrained(str(self._path), local_files_only=True)
        # The project tokenizes whole documents and cuts them into model_max_length windows itself
        # (SFT conversations, perplexity texts): mark transformers' one-time "sequence length is
        # longer than the specified maximum" warning as given, it is no news to a caller that does.
        tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
        return attach_generation(tokenizer, generation)

    def save(self, data: Any) -> None:
        if not hasattr(data, "save_pretrained"):
            raise DatasetError(f"HFTokenizerDataset.save expects a transformers tokenizer, got {type(data).__name__}")
        generation = new_generation_id()
        with atomic_dir(self._path) as tmp_dir:
            data.save_pretrained(str(tmp_dir))
            write_marker(tmp_dir, generation)
        attach_generation(data, generation)

    def _exists(self) -> bool:
        return (self._path / "tokenizer.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}
