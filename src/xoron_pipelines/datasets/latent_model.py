"""Datasets of the latent pipeline.

* :class:`CausalLMDirectoryDataset` -- the decoder: any local causal-LM directory
  (``AutoModelForCausalLM``, offline; the project's Xoron model by default) and its tokenizer
  (``tokenizer_path``, default: the model directory). Load-only.
* :class:`LatentModelDataset` -- one latent stage's weights: ``<dir>/<weights_file>.safetensors``
  (compression, middle, adapter, stop latent, trained encoder layers) + ``config.json`` (the
  :class:`~xoron_pipelines.latent.model.LatentConfig`, the decoder it was trained with, the stage
  summary). Saved atomically (staging directory, then renamed into place).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_dir

CONFIG_FILE = "config.json"


@dataclass
class DecoderBundle:
    model: Any
    tokenizer: Any
    path: str
    tokenizer_path: str


def load_decoder(path: str | Path, tokenizer_path: str | Path | None = None) -> DecoderBundle:
    """A local causal LM (float32, eval) and its tokenizer, never downloaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import xoron_pipelines.model  # noqa: F401  (registers model_type "xoron" with the Auto classes)

    path = Path(path)
    tok_path = Path(tokenizer_path) if tokenizer_path else path
    if not (path / CONFIG_FILE).is_file():
        raise DatasetError(
            f"no causal LM at {path} (config.json missing): run `kedro run --pipeline pretrain` or "
            "point latent_decoder (conf/base/catalog.yml) at a local model directory"
        )
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_path), local_files_only=True)
    return DecoderBundle(model.float().eval(), tokenizer, str(path), str(tok_path))


class CausalLMDirectoryDataset(AbstractDataset[None, DecoderBundle]):
    def __init__(self, path: str, tokenizer_path: str | None = None, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self._tokenizer_path = tokenizer_path
        self.metadata = metadata

    def load(self) -> DecoderBundle:
        return load_decoder(self._path, self._tokenizer_path)

    def save(self, data: Any) -> None:
        raise DatasetError("CausalLMDirectoryDataset is read-only (the decoder is trained by the pretrain pipeline)")

    def _exists(self) -> bool:
        return (self._path / CONFIG_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path)), "tokenizer_path": self._tokenizer_path}


@dataclass
class LatentArtifact:
    """Latent weights (name -> tensor) and the JSON config that rebuilds the model."""

    config: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)


class LatentModelDataset(AbstractDataset[LatentArtifact, LatentArtifact]):
    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def save(self, data: LatentArtifact) -> None:
        from safetensors.torch import save_file

        name = data.config.get("weights_file")
        if not isinstance(data, LatentArtifact) or not name:
            raise DatasetError("LatentModelDataset.save expects a LatentArtifact whose config names weights_file")
        with atomic_dir(self._path) as tmp_dir:
            save_file(data.state, str(tmp_dir / name))
            (tmp_dir / CONFIG_FILE).write_text(json.dumps(data.config, indent=2, sort_keys=True, default=str))

    def load(self) -> LatentArtifact:
        from safetensors.torch import load_file

        if not self._exists():
            raise DatasetError(f"no latent model at {self._path}; run `kedro run --pipeline latent`")
        config = json.loads((self._path / CONFIG_FILE).read_text(encoding="utf-8"))
        return LatentArtifact(config, load_file(str(self._path / config["weights_file"])))

    def _exists(self) -> bool:
        return (self._path / CONFIG_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}
