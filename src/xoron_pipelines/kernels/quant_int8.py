"""Symmetric per-row int8 quantisation: ``scale = absmax / 127``, ``q = round(x / scale)``.

Rounding is to nearest with ties away from zero (identical in both implementations, so the
Triton and torch codes agree bit for bit). An all-zero row gets ``scale = 1`` (q = 0, no NaN).
Quantisation is **not differentiable**: the outputs are an int8 tensor and a detached scale,
so no gradient flows back to ``x`` (use a straight-through estimator outside if ever needed).
Inputs may have any leading shape ``(..., D)``; ``scale`` then has shape ``(...)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def quantize_int8_rows_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch reference: (q int8 (..., D), scale float32 (...))."""
    xf = x.detach().to(torch.float32)
    absmax = xf.abs().amax(dim=-1)
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    y = xf / scale.unsqueeze(-1)
    q = torch.sign(y) * torch.floor(y.abs() + 0.5)
    return q.clamp_(-127, 127).to(torch.int8), scale


def dequantize_int8_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Back to float32: ``q * scale`` per row (pure torch, already a single fused op)."""
    return q.to(torch.float32) * scale.to(torch.float32).unsqueeze(-1)


@triton.jit
def _quant_int8_kernel(x_ptr, q_ptr, scale_ptr, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < n_cols)[None, :]
    offs = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    absmax = tl.max(tl.abs(x), axis=1)
    # div_rn: IEEE division on GPU too, so results match the torch reference exactly
    scale = tl.where(absmax > 0, tl.div_rn(absmax, 127.0), 1.0)
    y = tl.div_rn(x, scale[:, None])
    q = tl.floor(tl.abs(y) + 0.5)
    q = tl.minimum(tl.where(y < 0, -q, q), 127.0)
    q = tl.maximum(q, -127.0)
    tl.store(q_ptr + offs, q.to(tl.int8), mask=mask)
    tl.store(scale_ptr + rows, scale, mask=row_ok)


def quantize_int8_rows_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton quantisation (same contract as :func:`quantize_int8_rows_torch`), no backward."""
    lead, n_cols = x.shape[:-1], x.shape[-1]
    x2 = x.detach().reshape(-1, n_cols).contiguous()
    n_rows = x2.shape[0]
    q = torch.empty(x2.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    block_d = triton.next_power_of_2(n_cols)
    block_m = max(1, min(16, 4096 // block_d))
    if n_rows:
        _quant_int8_kernel[(triton.cdiv(n_rows, block_m),)](
            x2,
            q,
            scale,
            n_rows,
            n_cols,
            BLOCK_M=block_m,
            BLOCK_D=block_d,
            num_warps=4,
        )
    return q.view(*lead, n_cols), scale.view(lead)
