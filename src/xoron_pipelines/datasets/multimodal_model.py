"""``MultimodalModelDataset``: a multimodal stage's model directory (safetensors, never pickle).

``save(model)``: an :class:`~xoron_pipelines.model.multimodal.XoronMultimodalModel` through
:func:`~xoron_pipelines.export.multimodal.save_multimodal` (weights, config, the tokenizer read from
``tokenizer_path``, and the LLM alone as a native directory ``llm/``); a plain
``XoronForCausalLM`` (a stage the mode does not train passes the tools model through; mode
``text``) as :class:`~xoron_pipelines.datasets.model.XoronModelDataset` saves it. Both writes are
atomic. ``load()`` returns whichever of the two the directory holds, on the CPU, in eval mode.

Catalog use (one per stage)::

    image.model:
      type: xoron_pipelines.datasets.multimodal_model.MultimodalModelDataset
      path: data/06_models/multimodal/image
      tokenizer_path: data/05_model_input/tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.datasets.model import CONFIG_FILE, XoronModelDataset


class MultimodalModelDataset(AbstractDataset[Any, Any]):
    """A multimodal (or, passed through, text-only) Xoron model directory."""

    def __init__(self, path: str, tokenizer_path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self._tokenizer_path = Path(str(tokenizer_path).removeprefix("file://"))
        self.metadata = metadata

    def _is_multimodal(self) -> bool:
        from xoron_pipelines.export.multimodal import FORMAT

        config = self._path / CONFIG_FILE
        return config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT

    def load(self) -> Any:
        from xoron_pipelines.export.multimodal import load_multimodal

        if not self._exists():
            raise DatasetError(f"no model at {self._path} ({CONFIG_FILE} or *.safetensors missing)")
        if self._is_multimodal():
            return load_multimodal(self._path).float().eval()
        return XoronModelDataset(str(self._path)).load()

    def save(self, data: Any) -> None:
        from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset
        from xoron_pipelines.export.multimodal import save_multimodal
        from xoron_pipelines.model.multimodal import XoronMultimodalModel

        if not isinstance(data, XoronMultimodalModel):
            XoronModelDataset(str(self._path)).save(data)
            return
        tokenizer = HFTokenizerDataset(str(self._tokenizer_path))
        if not tokenizer._exists():
            raise DatasetError(f"MultimodalModelDataset: no tokenizer at {self._tokenizer_path} to save with the model")
        save_multimodal(data, tokenizer.load(), self._path, stage=self._path.name)

    def _exists(self) -> bool:
        return (self._path / CONFIG_FILE).is_file() and any(self._path.glob("*.safetensors"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path)), "tokenizer_path": str(PurePosixPath(self._tokenizer_path))}
