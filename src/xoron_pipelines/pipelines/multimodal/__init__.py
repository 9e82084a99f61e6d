"""``multimodal``: image / video / audio understanding stages after the finetune group."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
