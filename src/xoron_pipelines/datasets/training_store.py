"""Catalog datasets of a training stage's side outputs: its checkpoint store and its LoRA adapter.

``CheckpointStoreDataset`` (``<stage>.checkpoints``, an input of the stage's train node):
``load()`` gives a :class:`CheckpointStore`, a handle on ``<root>/<stage>``; the stage
orchestrator (:func:`xoron_pipelines.training.stage.run_stage`) writes the checkpoints of each
configuration into ``<root>/<stage>/<fingerprint>/checkpoint-<step>`` while it trains (and, for a
multi-process stage, the start model its workers load: ``<fingerprint>/start_model.node<rank>``),
and resumes from them. Nothing is read at load time; the store is written during the node, not
by ``save`` (a store is never a node output: ``save`` is refused).

``LoraAdapterDataset`` (``<stage>.lora_adapter``, an output of the train node): the stage's LoRA
adapter in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``, loads back with
``peft.PeftModel.from_pretrained(base, path)``), written atomically. The node's value is a
:class:`LoraAdapter` (the files peft wrote); a stage without LoRA gives an empty one, saved as an
empty directory, and ``load()`` returns the directory's :class:`LoraAdapter` (``.path`` set, empty
when the stage trained none). The export node takes every stage's ``<stage>.lora_adapter`` and
publishes the ``export.source`` stage's one (:func:`xoron_pipelines.export.bundle.export_adapter`).

Catalog use::

    "{stage}.checkpoints":
      type: xoron_pipelines.datasets.training_store.CheckpointStoreDataset
      root: data/06_models/checkpoints     # relative to the working directory, like checkpoint_dir
      stage: "{stage}"

    "{stage}.lora_adapter":
      type: xoron_pipelines.datasets.training_store.LoraAdapterDataset
      path: data/06_models/lora_adapters/{stage}
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_dir


@dataclass(frozen=True)
class CheckpointStore:
    """Where a stage's checkpoints live: ``root / stage`` (one directory per configuration inside)."""

    root: Path
    stage: str

    @property
    def path(self) -> Path:
        return self.root / self.stage


class CheckpointStoreDataset(AbstractDataset[None, CheckpointStore]):
    """Handle on ``<path>/<stage>``: see the module docstring."""

    def __init__(self, root: str, stage: str, metadata: dict[str, Any] | None = None) -> None:
        if not stage or "/" in stage:
            raise DatasetError(f"CheckpointStoreDataset: stage must be one directory name, got {stage!r}")
        self._root = Path(str(root).removeprefix("file://"))
        self._stage = stage
        self.metadata = metadata

    def load(self) -> CheckpointStore:
        return CheckpointStore(self._root, self._stage)

    def save(self, data: Any) -> None:
        raise DatasetError(
            f"{self._root / self._stage} is a checkpoint store: the stage writes into it while it "
            "trains; it is not a node output"
        )

    def _exists(self) -> bool:
        return True  # a store always exists: an empty one means "no checkpoint yet"

    def _describe(self) -> dict[str, Any]:
        return {"root": str(PurePosixPath(self._root)), "stage": self._stage}


@dataclass
class LoraAdapter:
    """A peft adapter as its files (name -> bytes); empty: the stage trained no adapter.
    ``path``: the directory it was loaded from (None for a node's in-memory value)."""

    files: dict[str, bytes] = field(default_factory=dict)
    path: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.files)

    @classmethod
    def of(cls, peft_model: Any) -> LoraAdapter:
        """The adapter of a ``peft.PeftModel`` exactly as ``save_pretrained`` writes it (safetensors)."""
        with tempfile.TemporaryDirectory() as tmp:
            peft_model.save_pretrained(tmp, safe_serialization=True)
            return cls(
                {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
            )

    def write_to(self, directory: Path) -> None:
        """Write the files into ``directory`` (an existing, normally fresh one: the caller makes it atomic)."""
        for name, blob in self.files.items():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)


class LoraAdapterDataset(AbstractDataset[LoraAdapter, LoraAdapter]):
    """A stage's LoRA adapter directory in peft format: see the module docstring."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> LoraAdapter:
        if not self._path.is_dir():
            raise DatasetError(f"no LoRA adapter directory at {self._path} (run the stage first)")
        files = {
            p.relative_to(self._path).as_posix(): p.read_bytes() for p in sorted(self._path.rglob("*")) if p.is_file()
        }
        return LoraAdapter(files, self._path)

    def save(self, data: LoraAdapter) -> None:
        if not isinstance(data, LoraAdapter):
            raise DatasetError(f"LoraAdapterDataset.save expects a LoraAdapter, got {type(data).__name__}")
        with atomic_dir(self._path) as tmp:
            data.write_to(tmp)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}


__all__ = ["CheckpointStore", "CheckpointStoreDataset", "LoraAdapter", "LoraAdapterDataset"]
