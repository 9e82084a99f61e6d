"""Rotary position embedding in the HF ``rotate_half`` convention.

``out = x * cos + rotate_half(x) * sin`` with ``rotate_half([x1, x2]) = [-x2, x1]`` (halves of
the last dimension). ``x`` is (B, heads, T, D); ``cos``/``sin`` are (B or 1, T, D), as produced
by HF rotary embedding modules. Gradients flow to ``x`` only in the Triton version (cos/sin are
position tables, never trained).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Pure-torch reference (HF ``apply_rotary_pos_emb`` for one tensor); autograd by torch."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


@triton.jit
def _rope_kernel(
    x_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    n_heads,
    seq_len,
    half,
    sxb,
    sxh,
    sxt,
    sxd,
    scb,
    sct,
    scd,
    BACKWARD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Rotate BLOCK_T positions of one (batch, head); BACKWARD applies the transposed rotation.

    forward:  o1 = x1*c1 - x2*s1,  o2 = x2*c2 + x1*s2
    backward: o1 = x1*c1 + x2*s2,  o2 = x2*c2 - x1*s1   (x = upstream gradient)
    """
    bh = tl.program_id(0)
    b = bh // n_heads
    h = bh % n_heads
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_H)
    mask = (t < seq_len)[:, None] & (d < half)[None, :]
    x_base = x_ptr + b * sxb + h * sxh + t[:, None] * sxt + d[None, :] * sxd
    c_base = b * scb + t[:, None] * sct + d[None, :] * scd
    x1 = tl.load(x_base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_base + half * sxd, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + c_base, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + c_base + half * scd, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + c_base, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + c_base + half * scd, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        o1 = x1 * c1 + x2 * s2
        o2 = x2 * c2 - x1 * s1
    else:
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
    # out is contiguous (B, heads, T, D)
    o_base = out_ptr + ((bh * seq_len + t[:, None]) * (2 * half)) + d[None, :]
    tl.store(o_base, o1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o_base + half, o2.to(out_ptr.dtype.element_ty), mask=mask)


def _rope_launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    """Run the kernel on a (B, heads, T, D) tensor of any strides; returns a contiguous tensor."""
    bsz, n_heads, seq_len, dim = x.shape
    half = dim // 2
    out = torch.empty((bsz, n_heads, seq_len, dim), dtype=x.dtype, device=x.device)
    # cos and sin share one set of strides; a batch of 1 broadcasts with stride 0.
    scb = 0 if cos.shape[0] == 1 else cos.stride(0)
    block_h = triton.next_power_of_2(half)
    block_t = max(1, min(64, 2048 // block_h))
    grid = (bsz * n_heads, triton.cdiv(seq_len, block_t))
    _rope_kernel[grid](
        x,
        cos,
        sin,
        out,
        n_heads,
        seq_len,
        half,
        *x.stride(),
        scb,
        cos.stride(1),
        cos.stride(2),
        BACKWARD=backward,
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        num_warps=4,
    )
    return out


class _RoPEFunction(torch.autograd.Function):
    """Triton forward and backward (the transposed rotation) for RoPE."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rope_launch(x, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rope_launch(dy, cos, sin, backward=True), None, None


def apply_rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Triton RoPE (same contract as :func:`apply_rope_torch`); differentiable in ``x`` only."""
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"apply_rope: x must be (B, heads, T, D) with even D, got {tuple(x.shape)}")
    bsz, _, seq_len, dim = x.shape
    if cos.shape != sin.shape or cos.dim() != 3 or cos.shape[1:] != (seq_len, dim) or cos.shape[0] not in (1, bsz):
        raise ValueError(
            f"apply_rope: cos/sin must be (B or 1, T, D) = ({bsz} or 1, {seq_len}, {dim}), "
            f"got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    if sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    return _RoPEFunction.apply(x, cos, sin)
