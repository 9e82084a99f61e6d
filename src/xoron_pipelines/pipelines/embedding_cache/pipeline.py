"""``embedding_cache``: (source, target) pairs and pretraining text -> encoder embedding caches.

Not part of the default ``kedro run``; run it with ``kedro run --pipeline embedding_cache``
after ``synth`` (the default pairs: ``synth_raw``) and ``data_processing`` (decoder tokenizer,
pretraining text). The caches are catalog datasets (``latent_pair_cache``,
``latent_pretrain_cache``) the ``latent`` pipeline reads.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import cache_pairs, cache_pretrain_text, report_cache


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                cache_pairs,
                inputs=["synth_raw", "tokenizer", "params:embedding_cache", "params:latent"],
                outputs="latent_pair_cache",
                name="cache_pair_embeddings",
            ),
            Node(
                cache_pretrain_text,
                inputs=["latent_pretrain_text", "tokenizer", "params:embedding_cache"],
                outputs="latent_pretrain_cache",
                name="cache_pretrain_embeddings",
            ),
            Node(report_cache, "latent_pair_cache", "embedding_cache_pair_metrics", name="report_pair_cache"),
            Node(
                report_cache, "latent_pretrain_cache", "embedding_cache_pretrain_metrics", name="report_pretrain_cache"
            ),
        ],
        tags=["embedding_cache", "latent"],
    )
