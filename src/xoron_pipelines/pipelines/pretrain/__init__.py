"""``pretrain``: the pretrain stages of the training template (see :mod:`xoron_pipelines.pipelines.training`)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
