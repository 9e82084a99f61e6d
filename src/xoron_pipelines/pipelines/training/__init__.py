"""The stage template shared by ``pretrain`` and ``finetune`` (``kedro run --pipeline training`` = both)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
