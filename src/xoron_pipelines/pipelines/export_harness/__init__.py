"""``export_harness`` pipeline: lm-evaluation-harness on the exported Hugging Face directory."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
