"""``latent``: train the latent-space model (seed 004) in four stages and generate from it."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
