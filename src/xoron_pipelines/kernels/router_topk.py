"""MoE router top-k with a selection-only bias (DeepSeek-V3 aux-loss-free balancing).

Experts are *selected* by ``scores + bias`` but the returned weights are the *unbiased*
``scores`` at the selected positions, so the bias steers load without entering the gradient.
Ties are broken deterministically: among equal biased scores the lower expert index wins, and
the k picks are returned in descending biased-score order. Gradients flow to ``scores`` at the
selected positions only; ``bias`` is a buffer and gets none.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _check(scores: torch.Tensor, bias: torch.Tensor | None, k: int) -> None:
    if scores.dim() != 2:
        raise ValueError(f"router_topk: scores must be (N, E), got {tuple(scores.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"router_topk: k={k} must be in [1, num_experts={scores.shape[1]}]")
    if bias is not None and bias.shape != (scores.shape[1],):
        raise ValueError(f"router_topk: bias must be ({scores.shape[1]},), got {tuple(bias.shape)}")


def router_topk_torch(scores: torch.Tensor, bias: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch reference: stable descending sort keeps lower indices first among ties."""
    _check(scores, bias, k)
    biased = scores.detach() if bias is None else scores.detach() + bias
    idx = torch.sort(biased, dim=-1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, idx), idx


@triton.jit
def _router_topk_fwd_kernel(
    s_ptr,
    b_ptr,
    w_ptr,
    i_ptr,
    n_experts,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """One program per token: K rounds of (max, lowest index attaining it, mark taken)."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_E)
    valid = offs < n_experts
    s = tl.load(s_ptr + row * n_experts + offs, mask=valid, other=0.0)
    key = s.to(tl.float32)
    if HAS_BIAS:
        key += tl.load(b_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    free = valid
    for j in range(K):
        best = tl.max(tl.where(free, key, float("-inf")), axis=0)
        hit = free & (key == best)
        pick = tl.min(tl.where(hit, offs, BLOCK_E), axis=0)
        chosen = offs == pick
        tl.store(w_ptr + row * K + j, tl.sum(tl.where(chosen, s, 0.0), axis=0).to(w_ptr.dtype.element_ty))
        tl.store(i_ptr + row * K + j, pick.to(tl.int64))
        free = free & (offs != pick)


@triton.jit
def _router_topk_bwd_kernel(dw_ptr, i_ptr, ds_ptr, n_experts, K: tl.constexpr, BLOCK_K: tl.constexpr):
    """Scatter the K upstream gradients of one token back to its selected experts."""
    row = tl.program_id(0)
    j = tl.arange(0, BLOCK_K)
    m = j < K
    idx = tl.load(i_ptr + row * K + j, mask=m, other=0)
    g = tl.load(dw_ptr + row * K + j, mask=m, other=0.0)
    tl.store(ds_ptr + row * n_experts + idx, g.to(ds_ptr.dtype.element_ty), mask=m)


class _RouterTopkFunction(torch.autograd.Function):
    """Triton top-k selection; backward scatters grads to the selected scores."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, bias: torch.Tensor | None, k: int):
        scores = scores.contiguous()
        n, n_experts = scores.shape
        weights = torch.empty(n, k, dtype=scores.dtype, device=scores.device)
        idx = torch.empty(n, k, dtype=torch.int64, device=scores.device)
        if n:
            _router_topk_fwd_kernel[(n,)](
                scores,
                scores if bias is None else bias.contiguous(),
                weights,
                idx,
                n_experts,
                K=k,
                HAS_BIAS=bias is not None,
                BLOCK_E=triton.next_power_of_2(n_experts),
                num_warps=1,
            )
        ctx.save_for_backward(idx)
        ctx.mark_non_differentiable(idx)
        ctx.n_experts = n_experts
        return weights, idx

    @staticmethod
    def backward(ctx, dweights: torch.Tensor, _didx):
        (idx,) = ctx.saved_tensors
        n, k = idx.shape
        dscores = torch.zeros(n, ctx.n_experts, dtype=dweights.dtype, device=dweights.device)
        if n:
            _router_topk_bwd_kernel[(n,)](
                dweights.contiguous(),
                idx,
                dscores,
                ctx.n_experts,
                K=k,
                BLOCK_K=triton.next_power_of_2(k),
                num_warps=1,
            )
        return dscores, None, None


def router_topk_triton(scores: torch.Tensor, bias: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton router top-k (same contract as :func:`router_topk_torch`)."""
    _check(scores, bias, k)
    return _RouterTopkFunction.apply(scores, bias, k)
