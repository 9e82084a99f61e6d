"""Gated cross-attention fusion: identity at initialisation, media reach only the tokens that see them."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines.model.fusion import GatedCrossAttention, fused_layer_indices

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 6, 16, generator=g)
    media = torch.randn(2, 5, 16, generator=g)
    visible = torch.zeros(2, 6, 5, dtype=torch.bool)
    visible[0, 2:, :3] = True  # row 0: item A (keys 0-2) seen from position 2 on
    visible[0, 4:, 3:] = True  # row 0: item B (keys 3-4) seen from position 4 on
    return hidden, media, visible  # row 1 sees nothing


def _opened(block: GatedCrossAttention) -> GatedCrossAttention:
    with torch.no_grad():
        block.attn_gate.fill_(0.5)
        block.ff_gate.fill_(0.5)
    return block


def test_identity_at_initialisation_exactly():
    torch.manual_seed(0)
    block = GatedCrossAttention(16, 4)
    hidden, media, visible = _inputs()
    assert torch.equal(block(hidden, media, visible), hidden)


def test_gates_learn_from_zero():
    """tanh(0) = 0 silences the block but its gates still get a gradient, so training opens them."""
    torch.manual_seed(0)
    block = GatedCrossAttention(16, 4)
    hidden, media, visible = _inputs()
    block(hidden, media, visible).pow(2).sum().backward()
    assert block.attn_gate.grad.abs().item() > 0 and block.ff_gate.grad.abs().item() > 0


def test_only_tokens_that_see_media_change():
    torch.manual_seed(0)
    block = _opened(GatedCrossAttention(16, 4))
    hidden, media, visible = _inputs()
    out = block(hidden, media, visible)
    sees = visible.any(-1)
    assert torch.equal(out[~sees], hidden[~sees])  # row 1 and row 0's first two positions
    assert (out[sees] - hidden[sees]).abs().amax(-1).min() > 1e-4


def test_a_token_reads_only_the_items_it_sees():
    torch.manual_seed(0)
    block = _opened(GatedCrossAttention(16, 4))
    hidden, media, visible = _inputs()
    out = block(hidden, media, visible)
    changed = media.clone()
    changed[0, 3:] = torch.randn(2, 16)  # item B, seen from position 4 on
    out2 = block(hidden, changed, visible)
    assert torch.equal(out2[0, :4], out[0, :4])
    assert not torch.allclose(out2[0, 4:], out[0, 4:])


def test_fused_layer_indices():
    assert fused_layer_indices(4, 1) == [0, 1, 2, 3]
    assert fused_layer_indices(4, 2) == [1, 3]
    assert fused_layer_indices(5, 2) == [1, 3]
    assert fused_layer_indices(12, 3) == [2, 5, 8, 11]  # seed 003: 4 fusion layers in 12
    assert fused_layer_indices(4, 0) == []
    with pytest.raises(ValueError, match="exceeds the LLM's 4 decoder layers"):
        fused_layer_indices(4, 5)
    with pytest.raises(ValueError, match="not divisible by cross_attention_heads 3"):
        GatedCrossAttention(16, 3)
