"""``EmbeddingCacheDataset``: the manifest of one embedding-cache subset, opened as readers.

The ``embedding_cache`` pipeline writes the cache itself under ``preprocess_cache_dir`` (it must
look at the stored fingerprint before deciding to rebuild, so the directory is a parameter, not
a catalog path) and returns the subset's manifest; this dataset saves that manifest as JSON
(atomically) and loads it back as a :class:`CacheSubset` whose ``train`` / ``val`` are
:class:`~xoron_pipelines.latent.cache.EmbeddingCache` readers.

Catalog use::

    latent_pair_cache:
      type: xoron_pipelines.datasets.embedding_cache.EmbeddingCacheDataset
      filepath: data/04_feature/latent_pair_cache.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.latent.cache import EmbeddingCache, write_json


class CacheSubset:
    """One subset (``pairs`` / ``pretrain``): its manifest and a reader per split."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.path = Path(manifest["path"])
        self.splits = {s: EmbeddingCache(self.path / s) for s in manifest["splits"]}

    @property
    def train(self) -> EmbeddingCache:
        return self.splits["train"]

    @property
    def val(self) -> EmbeddingCache:
        return self.splits["val"]

    def quarantine(self) -> list[dict[str, Any]]:
        """Rows that were not encoded, with their reason."""
        path = self.path / self.manifest["quarantine"]
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def __repr__(self) -> str:
        return f"CacheSubset({str(self.path)!r}, {', '.join(f'{k}={len(v)}' for k, v in self.splits.items())})"


class EmbeddingCacheDataset(AbstractDataset[dict, CacheSubset]):
    """Save: a subset manifest (dict) -> JSON file. Load: :class:`CacheSubset`."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(str(filepath).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> CacheSubset:
        if not self._filepath.is_file():
            raise DatasetError(f"no embedding cache manifest at {self._filepath}; run `kedro run --pipeline embedding_cache`")
        manifest = json.loads(self._filepath.read_text(encoding="utf-8"))
        manifest["path"] = str(self._filepath.parent / manifest["path"])
        return CacheSubset(manifest)

    def save(self, data: dict[str, Any]) -> None:
        """Write the manifest; the cache path is stored relative to the manifest file, so the
        project directory can move (load resolves it against the manifest's directory)."""
        if not isinstance(data, dict) or "path" not in data or "splits" not in data:
            raise DatasetError("EmbeddingCacheDataset.save expects a cache manifest (dict with 'path' and 'splits')")
        rel = os.path.relpath(Path(data["path"]).resolve(), self._filepath.parent.resolve())
        write_json(self._filepath, {**data, "path": rel})

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._filepath))}
