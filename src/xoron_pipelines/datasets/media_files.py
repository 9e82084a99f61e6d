"""Datasets of the generation pipeline: a trained generator directory and PNG files.

``GeneratorDataset``: a :class:`~xoron_pipelines.training.flow.Generator` saved as ``dit/``
(diffusers ``save_pretrained``: config.json + safetensors), ``vae/`` when it works in a latent
space, and ``generator.json``; published atomically (:func:`~xoron_pipelines.atomic.atomic_dir`).

``PNGDataset``: one uint8 (H, W, 3) image as a PNG file (atomic write); the partition dataset of
``partitions.PartitionedDataset`` for generated media (a video is saved as its frame strip).

Catalog use::

    image_gen.generator:
      type: xoron_pipelines.datasets.media_files.GeneratorDataset
      path: data/06_models/generation/image_gen
    generated_media:
      type: partitions.PartitionedDataset
      path: data/07_model_output/generation
      dataset: xoron_pipelines.datasets.media_files.PNGDataset
      filename_suffix: ".png"
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_dir, atomic_file


class GeneratorDataset(AbstractDataset[Any, Any]):
    """A trained image or video generator directory."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> Any:
        from xoron_pipelines.training.flow import META_FILE, Generator

        if not (self._path / META_FILE).is_file():
            raise DatasetError(
                f"no generator at {self._path} ({META_FILE} missing): run `kedro run --pipeline generation`"
            )
        return Generator.load(self._path)

    def save(self, data: Any) -> None:
        if not hasattr(data, "dit") or not hasattr(data, "save"):
            raise DatasetError(f"GeneratorDataset.save expects a Generator, got {type(data).__name__}")
        with atomic_dir(self._path) as tmp:
            data.save(tmp)

    def _exists(self) -> bool:
        return (self._path / "generator.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}


class PNGDataset(AbstractDataset[np.ndarray, np.ndarray]):
    """A uint8 RGB image (H, W, 3) as a PNG file."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(filepath).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> np.ndarray:
        from PIL import Image

        with Image.open(self._path) as img:
            return np.asarray(img.convert("RGB")).copy()

    def save(self, data: np.ndarray) -> None:
        from PIL import Image

        arr = np.asarray(data)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
            raise DatasetError(f"PNGDataset.save expects uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
        with atomic_file(self._path) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")

    def _exists(self) -> bool:
        return self._path.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._path))}
