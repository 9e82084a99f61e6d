"""``EmbeddingCacheDataset``: one embedding-cache subset (a directory), saved from a
:class:`~xoron_pipelines.latent.cache_build.CacheBuild` and loaded as a lazy
:class:`~xoron_pipelines.latent.cache.CacheSubset` (manifest + a reader per split).

Save reuses what is stored when the build's fingerprint equals the stored one (and
``skip_preprocessing_if_cached``): only ``manifest.json`` is rewritten, with ``cache_hit: true``.
Otherwise the rows are encoded into a temporary sibling directory that is swapped in atomically
(a failed build leaves the previous cache). The catalog path is where the cache lives; seed
004's ``embedding_cache.preprocess_cache_dir``, when set, must be its parent directory (checked
before anything is encoded).

Catalog use::

    latent_pair_cache:
      type: xoron_pipelines.datasets.embedding_cache.EmbeddingCacheDataset
      path: data/04_feature/embedding_cache/pairs
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_dir
from xoron_pipelines.latent.cache import MANIFEST_FILE, CacheSubset, write_json
from xoron_pipelines.latent.cache_build import CacheBuild, read_manifest

__all__ = ["CacheSubset", "EmbeddingCacheDataset"]

log = logging.getLogger(__name__)


class EmbeddingCacheDataset(AbstractDataset[CacheBuild, CacheSubset]):
    """Save: a :class:`CacheBuild` (reused or written atomically). Load: :class:`CacheSubset`."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(path).removeprefix("file://"))
        self.metadata = metadata

    def load(self) -> CacheSubset:
        if not (self._path / MANIFEST_FILE).is_file():
            raise DatasetError(f"no embedding cache at {self._path}; run `kedro run --pipeline embedding_cache`")
        return CacheSubset(self._path)

    def save(self, data: CacheBuild) -> None:
        if not isinstance(data, CacheBuild):
            raise DatasetError(f"EmbeddingCacheDataset({self._path}) saves a CacheBuild, got {type(data).__name__}")
        wanted = data.params.preprocess_cache_dir
        if wanted is not None and Path(wanted).resolve() != self._path.parent.resolve():
            raise DatasetError(
                f"embedding_cache.preprocess_cache_dir is {wanted} but the catalog writes the {data.subset} cache to "
                f"{self._path}: set preprocess_cache_dir to {self._path.parent} (or null), or change the catalog path"
            )
        stored = read_manifest(self._path)
        if data.reuses(stored):
            log.info("embedding_cache/%s: fingerprint unchanged, reusing %s", data.subset, self._path)
            write_json(self._path / MANIFEST_FILE, {**stored, "cache_hit": True})
            return
        log.info("embedding_cache/%s: building %d rows (%s)", data.subset, len(data.rows), data.reason(stored))
        with atomic_dir(self._path) as tmp_dir:  # a failed build leaves the previous cache (and no temp dir)
            data.write(tmp_dir)

    def _exists(self) -> bool:
        return (self._path / MANIFEST_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}
