"""``generation``: image and video generators (MoE-DiT, flow matching) conditioned on the frozen LLM."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
