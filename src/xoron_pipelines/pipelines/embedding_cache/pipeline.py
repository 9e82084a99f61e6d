"""``embedding_cache``: (source, target) pairs and pretraining text -> encoder embedding caches.

Not part of the default ``kedro run``; run it with ``kedro run --pipeline embedding_cache``
after ``synth`` (the default pairs) and ``data_processing`` (decoder tokenizer, pretraining text).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import cache_pairs, cache_pretrain_text


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                cache_pairs,
                inputs=["latent_pairs", "tokenizer", "synth_manifest", "params:embedding_cache"],
                outputs=["latent_pair_cache", "embedding_cache_pair_metrics"],
                name="cache_pair_embeddings",
            ),
            Node(
                cache_pretrain_text,
                inputs=["latent_pretrain_text", "tokenizer", "params:embedding_cache"],
                outputs=["latent_pretrain_cache", "embedding_cache_pretrain_metrics"],
                name="cache_pretrain_embeddings",
            ),
        ],
        tags=["embedding_cache", "latent"],
    )
