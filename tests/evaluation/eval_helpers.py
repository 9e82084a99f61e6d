"""Helpers of the evaluation tests (a uniquely named module: test dirs share sys.path)."""

from __future__ import annotations


def make_model(vocab_size: int, seed: int = 0, preset: str = "nano", max_positions: int = 128):
    """A 1-layer, 32-wide model of the ``nano`` preset family (random weights, eval mode)."""
    import torch

    from xoron_pipelines.model import XoronForCausalLM, get_config

    torch.manual_seed(seed)
    config = get_config(
        preset,
        vocab_size=vocab_size,
        num_layers=1,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    return XoronForCausalLM(config).eval()
