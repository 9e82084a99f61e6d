"""Catalog datasets of speech generation.

- ``SpeechModelDataset``: a :class:`~xoron_pipelines.model.speech.SpeechModel` directory
  (``config.json`` + ``model.safetensors``; never pickle), published atomically
  (:func:`~xoron_pipelines.atomic.atomic_dir`: a failed save leaves the previous model).
- ``AudioFilesDataset``: ``{file name: WAV bytes}`` as one directory of files, published
  atomically; ``load`` reads them back (names sorted).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_dir


class SpeechModelDataset(AbstractDataset[Any, Any]):
    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> Any:
        from xoron_pipelines.model.speech import CONFIG_FILE, WEIGHTS_FILE, SpeechModel

        if not ((self._path / CONFIG_FILE).is_file() and (self._path / WEIGHTS_FILE).is_file()):
            raise DatasetError(f"no speech model at {self._path} ({CONFIG_FILE} or {WEIGHTS_FILE} missing)")
        return SpeechModel.from_pretrained(self._path)

    def save(self, data: Any) -> None:
        if not hasattr(data, "save_pretrained"):
            raise DatasetError(f"SpeechModelDataset.save expects a SpeechModel, got {type(data).__name__}")
        with atomic_dir(self._path) as tmp:
            data.save_pretrained(tmp)

    def _exists(self) -> bool:
        return (self._path / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}


class AudioFilesDataset(AbstractDataset[dict, dict]):
    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> dict[str, bytes]:
        if not self._path.is_dir():
            raise DatasetError(f"no audio files at {self._path}")
        return {p.name: p.read_bytes() for p in sorted(self._path.iterdir()) if p.is_file()}

    def save(self, data: dict[str, bytes]) -> None:
        bad = [name for name in data if not name or "/" in name or name.startswith(".")]
        if bad:
            raise DatasetError(f"AudioFilesDataset: file names must be plain names, got {bad[:3]}")
        with atomic_dir(self._path) as tmp:
            for name, payload in data.items():
                (tmp / name).write_bytes(payload)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}
