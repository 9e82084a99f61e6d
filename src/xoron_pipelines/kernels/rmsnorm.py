"""RMSNorm: ``y = x / sqrt(mean(x^2) + eps) * weight``, matching HF ``LlamaRMSNorm``.

The statistic is computed in fp32, the normalised activations are cast back to the input dtype
and then multiplied by ``weight`` (exactly the order HF uses, so bf16 results agree).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_BWD_PROGRAMS = 256  # backward programs stride over row blocks; dw partials are (this, D)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pure-torch reference (HF LlamaRMSNorm); autograd by torch."""
    hidden = x.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(x.dtype)


@triton.jit
def _rms_norm_fwd_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr, n_rows, n_cols, eps,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program normalises BLOCK_M rows; saves 1/rms per row for the backward pass."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    offs = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    x_hat = (x * rstd[:, None]).to(x_ptr.dtype.element_ty)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0)
    tl.store(y_ptr + offs, (x_hat * w[None, :]).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _rms_norm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_part_ptr, n_rows, n_cols, n_blocks,
    NPROG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx = rstd * (dy*w - x_hat * mean(dy*w*x_hat)); dw partial sums of dy*x_hat per program.

    Programs stride over row blocks so the dw partial buffer is only (NPROG, D).
    """
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for blk in range(pid, n_blocks, NPROG):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        offs = rows[:, None] * n_cols + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        x_hat = x * rstd[:, None]
        dxh = dy * w[None, :]
        c = tl.sum(dxh * x_hat, axis=1) / n_cols
        dx = (dxh - x_hat * c[:, None]) * rstd[:, None]
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw_acc += tl.sum(dy * x_hat, axis=0)
    tl.store(dw_part_ptr + pid * n_cols + cols, dw_acc, mask=col_ok)


def _launch_shape(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps): pack several short rows per program, one long row."""
    block_d = triton.next_power_of_2(n_cols)
    block_m = max(1, min(16, 4096 // block_d))
    num_warps = min(max(block_m * block_d // 512, 1), 16)
    return block_m, block_d, num_warps


class _RMSNormFunction(torch.autograd.Function):
    """Triton forward and backward for RMSNorm over the last dimension."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        n_rows, n_cols = x2.shape
        y = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block_m, block_d, warps = _launch_shape(n_cols)
        grid = (triton.cdiv(n_rows, block_m),)
        _rms_norm_fwd_kernel[grid](
            x2, weight.contiguous(), y, rstd, n_rows, n_cols, eps,
            BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
        )
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, rstd = ctx.saved_tensors
        n_rows, n_cols = x2.shape
        dy2 = dy.reshape(-1, n_cols).contiguous()
        dx = torch.empty_like(x2)
        block_m, block_d, warps = _launch_shape(n_cols)
        n_blocks = triton.cdiv(n_rows, block_m)
        nprog = min(n_blocks, _MAX_BWD_PROGRAMS)
        dw_part = torch.empty(nprog, n_cols, dtype=torch.float32, device=x2.device)
        _rms_norm_bwd_kernel[(nprog,)](
            dy2, x2, weight.contiguous(), rstd, dx, dw_part, n_rows, n_cols, n_blocks,
            NPROG=nprog, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
        )
        dw = dw_part.sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return dx.view(ctx.shape), dw, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Triton RMSNorm (same contract as :func:`rms_norm_torch`); differentiable in x and weight."""
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"rms_norm: weight has {weight.shape[-1]} features, x has {x.shape[-1]}")
    return _RMSNormFunction.apply(x, weight, eps)
