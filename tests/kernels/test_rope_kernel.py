"""RoPE: Triton vs torch reference vs HF apply_rotary_pos_emb, forward and gradients (fp32)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from xoron_pipelines.kernels import apply_rope
from xoron_pipelines.kernels.rope import apply_rope_torch, apply_rope_triton

ATOL, RTOL = 1e-5, 1e-5


def _tables(batch: int, seq: int, dim: int, device: str, theta: float = 10000.0):
    """HF-style cos/sin (batch, seq, dim) for positions 0..seq-1 (shifted per batch row)."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    pos = torch.arange(seq, dtype=torch.float32)[None, :] + 3 * torch.arange(batch)[:, None]
    emb = torch.cat([pos[..., None] * inv] * 2, dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


@pytest.mark.parametrize("table_batch", [1, 2])
def test_triton_matches_reference(device, check_parity, table_batch):
    x = torch.randn(2, 3, 17, 10, device=device, requires_grad=True)
    cos, sin = _tables(table_batch, 17, 10, device)
    check_parity(lambda t: apply_rope_triton(t, cos, sin), lambda t: apply_rope_torch(t, cos, sin), [x], ATOL, RTOL)


def test_non_contiguous_input(device, check_parity):
    """(B, T, heads, D) projections transposed to (B, heads, T, D), as attention produces them."""
    x = torch.randn(2, 19, 5, 6, device=device).transpose(1, 2).requires_grad_()
    cos, sin = _tables(1, 19, 6, device)
    check_parity(lambda t: apply_rope_triton(t, cos, sin), lambda t: apply_rope_torch(t, cos, sin), [x], ATOL, RTOL)


def test_reference_matches_hf_and_preserves_pair_norms(device):
    q, k = torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)
    cos, sin = _tables(2, 9, 8, "cpu")
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(apply_rope_torch(q, cos, sin), hf_q)
    out = apply_rope(k.to(device), cos.to(device), sin.to(device), impl="triton").cpu()
    torch.testing.assert_close(out, hf_k, atol=ATOL, rtol=RTOL)
    # a rotation keeps the norm of every (i, i + D/2) pair
    pair_norm = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2  # noqa: E731
    torch.testing.assert_close(pair_norm(out), pair_norm(k), atol=1e-5, rtol=1e-5)


def test_bad_shapes_are_rejected(device):
    cos, sin = _tables(1, 5, 6, device)
    with pytest.raises(ValueError, match="even D"):
        apply_rope_triton(torch.randn(1, 2, 5, 5, device=device), cos[..., :5], sin[..., :5])
    with pytest.raises(ValueError, match="cos/sin"):
        apply_rope_triton(torch.randn(1, 2, 4, 6, device=device), cos, sin)
