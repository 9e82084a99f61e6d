"""Shared inputs of the embedding_cache tests."""

TEXTS = [
    "Alice: Can we meet on Monday?\nBob: Sure, at noon at the cafe.",
    "The quick brown fox jumps over the lazy dog.",
    "Short one.",
    "Carol reports that the app crashes on start; Dan will ship a fix tomorrow morning.",
]


def save_cache(build, cache_dir):
    """Save a node's CacheBuild through the catalog dataset at ``<cache_dir>/<subset>`` (as the
    catalog does) and return the loaded CacheSubset and its metrics (name -> value)."""
    from pathlib import Path

    from xoron_pipelines.datasets.embedding_cache import EmbeddingCacheDataset
    from xoron_pipelines.pipelines.embedding_cache.nodes import report_cache

    ds = EmbeddingCacheDataset(str(Path(cache_dir) / build.subset))
    ds.save(build)
    sub = ds.load()
    return sub, {k: v["value"] for k, v in report_cache(sub).items()}
