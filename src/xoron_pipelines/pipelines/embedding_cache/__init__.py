"""``embedding_cache``: encode (source, target) pairs and pretraining text once into a cache."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
