"""``XoronModelDataset``: a trained Xoron model directory (``save_pretrained``: config.json +
model.safetensors; never pickle).

``load`` -> ``XoronForCausalLM.from_pretrained(path)`` in eval mode, float32; ``save(model)``
writes into a temporary sibling directory and then swaps it into place by renames
(:func:`~xoron_pipelines.atomic.atomic_dir`), so a failing save leaves the
previous directory intact and a reader never sees a half-written model.

Catalog use (one directory per training stage, via a dataset factory)::

    "{stage}.model":
      type: xoron_pipelines.datasets.model.XoronModelDataset
      path: data/06_models/{stage}
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_dir

CONFIG_FILE = "config.json"


class XoronModelDataset(AbstractDataset[Any, Any]):
    """A ``XoronForCausalLM`` saved as safetensors in a directory."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> Any:
        import torch

        from xoron_pipelines.model import XoronForCausalLM

        if not self._exists():
            raise DatasetError(f"no Xoron model at {self._path} ({CONFIG_FILE} or *.safetensors missing)")
        model = XoronForCausalLM.from_pretrained(str(self._path), dtype=torch.float32)
        return model.float().eval()

    def save(self, data: Any) -> None:
        if not hasattr(data, "save_pretrained"):
            raise DatasetError(
                f"XoronModelDataset.save expects a model with save_pretrained, got {type(data).__name__}"
            )
        with atomic_dir(self._path) as tmp_dir:
            data.save_pretrained(str(tmp_dir), safe_serialization=True)

    def _exists(self) -> bool:
        return (self._path / CONFIG_FILE).is_file() and any(self._path.glob("*.safetensors"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}


class StageModels:
    """Lazy view of ``<root>/<stage>`` model directories: ``models["code"]`` loads that stage."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def stages(self) -> list[str]:
        """Stages that have a saved model, sorted by name."""
        return (
            sorted(p.name for p in self.root.iterdir() if XoronModelDataset(str(p))._exists())
            if self.root.is_dir()
            else []
        )

    def __getitem__(self, stage: str) -> Any:
        dataset = XoronModelDataset(str(self.root / stage))
        if not dataset._exists():
            raise DatasetError(
                f"no model for stage {stage!r} under {self.root} (saved stages: {self.stages()}); "
                f"train it first, e.g. kedro run --pipeline pretrain / finetune"
            )
        return dataset.load()


class StageModelsDataset(AbstractDataset[Any, Any]):
    """Read-only root of the stage model directories; ``load`` -> :class:`StageModels`.

    Lets a node pick a stage by parameter (``export.source``) instead of fixing it in the catalog.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> StageModels:
        return StageModels(self._path)

    def save(self, data: Any) -> None:
        raise DatasetError("StageModelsDataset is read-only: each stage saves through its '<stage>.model' dataset")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}
