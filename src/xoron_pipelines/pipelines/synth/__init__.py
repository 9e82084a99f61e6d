"""``synth``: offline, seeded synthetic training data in Xoron's categories."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
