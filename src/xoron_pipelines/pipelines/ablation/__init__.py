"""``ablation``: variants of ``ablation.variants`` trained alike and compared (seed 002's ablations)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
