"""Nodes of the ``embedding_cache`` pipeline (the library: :mod:`xoron_pipelines.latent.cache_build`).

Each cache node returns a :class:`~xoron_pipelines.latent.cache_build.CacheBuild`; the catalog's
``EmbeddingCacheDataset`` reuses or writes the cache on save, and the report nodes turn what it
holds into MLflow metrics.
"""

from __future__ import annotations

from typing import Any

from xoron_pipelines.latent.cache import CacheSubset
from xoron_pipelines.latent.cache_build import CacheBuild, cache_metrics, pair_rows, plan_subset, pretrain_rows
from xoron_pipelines.latent.sources import pair_source
from xoron_pipelines.pipelines.latent.params import Params as LatentParams

from .params import Params


def cache_pairs(synth_raw: Any, tokenizer: Any, params: dict[str, Any], latent_params: dict[str, Any]) -> CacheBuild:
    """The (source, target) pairs of ``latent.dataset_name`` (default: synth's dialogue_summary
    partition of ``synth_raw``) and its splits, to be cached."""
    p, lp = Params.model_validate(params), LatentParams.model_validate(latent_params)
    return plan_subset("pairs", pair_rows(pair_source(synth_raw, lp.dataset_name, lp.pair_splits()), p), tokenizer, p)


def cache_pretrain_text(latent_pretrain_text: Any, tokenizer: Any, params: dict[str, Any]) -> CacheBuild:
    """A sample of general text with identity targets (latent pretraining, stage 1), to be cached."""
    p = Params.model_validate(params)
    return plan_subset("pretrain", pretrain_rows(latent_pretrain_text, p), tokenizer, p)


def report_cache(cache: CacheSubset) -> dict[str, dict[str, float]]:
    """A subset's counts and whether the last save reused the stored cache (MLflow metrics)."""
    return cache_metrics(cache.manifest)
