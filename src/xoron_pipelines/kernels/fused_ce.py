"""Fused linear + cross-entropy: the LM-head projection and the loss without N x V logits.

``logits = hidden @ weight.T`` is only ever built for ``chunk_size`` token rows at a time. Two
drivers share the per-chunk row work:

* gradients in the forward pass (reductions ``"mean"``/``"sum"`` while gradients are needed,
  Liger-kernel style): the upstream gradient of a scalar loss is a scalar ``g``, so each
  chunk's ``dlogits = (w_i / sum w) * (softmax - onehot)`` is known in forward. Per chunk:
  logits, per-row loss, ``dlogits`` in place, ``grad_hidden = dlogits @ weight`` and
  ``grad_weight += dlogits.T @ hidden`` - three vocab-sized matmuls, no recompute. Backward
  only multiplies the two saved gradients by ``g``.
* per-token losses (``"none"``, loss weights that require grad, or no gradient wanted):
  forward keeps one fp32 log-sum-exp per token; backward recomputes each chunk's logits, turns
  them in place into ``grad_ce * (softmax - onehot)`` and accumulates the same two products.

Peak extra memory is one chunk of logits plus the fp32 ``grad_weight`` accumulator (which
becomes ``weight.grad``; the first chunk writes it, so it is never zero-filled).

The two implementations differ in the per-row work on a chunk: ``torch`` runs ATen's fused
softmax over it in place (:func:`_ce_and_grad_rows_torch`), ``triton`` runs one program per
token that streams the vocabulary in BLOCK_V blocks with an online log-sum-exp (and the
matching gradient kernel). The matmuls stay in torch (cuBLAS on GPU); on CPU in fp32 the two
``x @ W.T``-shaped ones (logits, ``grad_hidden``) go through oneDNN (:mod:`.matmul`: about
10-25% faster than MKL's sgemm for these thin products on the project's AMD box), the weight
gradient stays MKL's ``addmm_``. CPU chunks are therefore smaller than they were with MKL
(512 rows, 64 MiB): equal chunks of at most 24 MiB of logits (:func:`cpu_chunk_size`, 170
rows for the 1020 x 256 x 32000 LM head of the training-step benchmark), which a fresh oneDNN
output can use without a new memory mapping per chunk.

Loss semantics (all reductions): per-token ``ce_i`` is 0 at ``ignore_index``; with per-token
``loss_weights`` w (1 when None) ``"none"`` returns ``w_i * ce_i``, ``"sum"`` their sum and
``"mean"`` ``sum(w_i * ce_i) / sum(w_i)`` over non-ignored tokens (0 when that sum is 0, instead
of PyTorch's NaN). Losses are float32. ``hidden`` may be (..., H) with ``labels`` (...).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .matmul import mm_nn, mm_nt

Reduction = Literal["mean", "sum", "none"]
_LOGITS_BUDGET = 1 << 22  # default chunk: about 4M logits (16 MiB in fp32) at a time
_CPU_LOGITS_BUDGET = 6 << 20  # CPU: at most 6M logits (24 MiB fp32) per chunk, see cpu_chunk_size
_MAX_BLOCK_V = 8192  # vocabulary block streamed per step by the Triton row kernels


def default_chunk_size(n_tokens: int, vocab_size: int, hidden_size: int, budget: int = _LOGITS_BUDGET) -> int:
    """Rows per chunk: a power of two, at least 1, at most N.

    The chunk's logits hold about max(budget, N * H) elements: a fixed budget (default
    ``_LOGITS_BUDGET``), raised to the size of
    ``hidden`` itself for big batches, so large batches run few, large matmuls while extra
    memory stays of the order of the activations already held.
    """
    rows = max(1, max(budget, n_tokens * hidden_size) // max(vocab_size, 1))
    return max(1, min(n_tokens, 1 << (rows.bit_length() - 1)))


def cpu_chunk_size(n_tokens: int, vocab_size: int, budget: int = _CPU_LOGITS_BUDGET) -> int:
    """Rows per chunk on CPU: equal chunks (no power-of-two rounding), each at most ``budget`` logits.

    Every chunk's logits are a fresh oneDNN output (:mod:`.matmul`), so the cap keeps them well
    under glibc's 32 MiB mmap threshold, where a freed block is recycled by the heap instead of
    being mapped afresh (4K page faults) for every chunk. Within the cap, larger chunks are
    better: each chunk streams the V x H weight through two products and the fp32 weight
    gradient through a third, and at 2 threads the products get markedly more efficient from
    128 to about 200 rows (measured on the 1020 x 256 x 32000 LM head: 170-row chunks took
    about 0.92x the time of 128-row ones at 2 threads, 0.97x at 1). Splitting N into equal
    chunks avoids a small, inefficient last chunk.
    """
    max_rows = max(1, budget // max(vocab_size, 1))
    chunks = -(-n_tokens // max_rows)
    return max(1, -(-n_tokens // max(chunks, 1)))


def auto_chunk_size(n_tokens: int, vocab_size: int, hidden_size: int, device_type: str) -> int:
    """The chunk used when none is given: :func:`cpu_chunk_size` on CPU, otherwise
    :func:`default_chunk_size` (the caching allocator recycles any chunk size there)."""
    if device_type == "cpu":
        return cpu_chunk_size(n_tokens, vocab_size)
    return default_chunk_size(n_tokens, vocab_size, hidden_size, _LOGITS_BUDGET)


def _token_weights(labels: torch.Tensor, loss_weights: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """Per-token fp32 weights: ``loss_weights`` (1 when None), 0 where the label is ignored."""
    valid = labels != ignore_index
    return valid.to(torch.float32) if loss_weights is None else loss_weights.to(torch.float32) * valid


def _safe_div(num: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``num / denom``, 0 where ``denom`` is 0 (an all-ignored batch has mean loss 0, not NaN)."""
    return torch.where(denom != 0, num / torch.where(denom != 0, denom, 1.0), torch.zeros_like(num))


def _reduce(
    ce: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None, ignore_index: int, reduction: str
) -> torch.Tensor:
    """Weighted reduction of per-token losses (ignored tokens have weight 0)."""
    w = _token_weights(labels, loss_weights, ignore_index)
    weighted = ce * w
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    return _safe_div(total, w.sum())


def _check(hidden, weight, labels, loss_weights, reduction) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"fused_linear_cross_entropy: unknown reduction {reduction!r}")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"fused_linear_cross_entropy: hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} "
            "must be (..., H) and (V, H)"
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"fused_linear_cross_entropy: labels {tuple(labels.shape)} must be {tuple(hidden.shape[:-1])}")
    if loss_weights is not None and loss_weights.shape != labels.shape:
        raise ValueError(
            f"fused_linear_cross_entropy: loss_weights {tuple(loss_weights.shape)} "
            f"must match labels {tuple(labels.shape)}"
        )


def linear_cross_entropy_naive(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Unfused peer for tests and benchmarks: materialises all N x V logits (at least fp32)."""
    _check(hidden, weight, labels, loss_weights, reduction)
    logits = hidden @ weight.T
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    ce = F.cross_entropy(
        logits.reshape(-1, weight.shape[0]), labels.reshape(-1), ignore_index=ignore_index, reduction="none"
    ).view(labels.shape)
    return _reduce(ce, labels, loss_weights, ignore_index, reduction)


# ---------------------------------------------------------------- per-chunk row work: torch
def _ce_rows_torch(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    """(ce, lse) per row of a logits chunk; ce is 0 where the label is ignored."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    valid = labels != ignore_index
    target = logits.gather(1, torch.where(valid, labels, 0).unsqueeze(1)).squeeze(1)
    return torch.where(valid, lse - target, 0.0), lse


def _ce_grad_rows_torch(logits, labels, lse, grad, ignore_index):
    """In place: logits -> grad * (softmax - onehot), zero rows for ignored labels."""
    valid = labels != ignore_index
    probs = logits.float()  # the chunk itself when it is already fp32
    probs.sub_(lse.unsqueeze(1)).exp_()
    rows = torch.arange(labels.shape[0], device=labels.device)
    probs[rows, torch.where(valid, labels, 0)] -= valid.to(probs.dtype)
    probs.mul_(torch.where(valid, grad, 0.0).unsqueeze(1))
    return probs if probs is logits else logits.copy_(probs)


def _ce_and_grad_rows_torch(logits, labels, scale, ignore_index):
    """Per-row ce of a logits chunk, and its gradient as (in-place chunk, per-row factor).

    ``scale`` (rows,) fp32 is each row's d(loss)/d(ce), already 0 at ignored labels. The chunk
    becomes ``softmax - onehot`` and ``dlogits = factor[:, None] * chunk`` with ``factor =
    scale``: the row factor is applied to the small (rows x H) operands of the two gradient
    matmuls instead of to the chunk, which saves a pass over it.

    The softmax is ATen's fused row kernel (max, exp, sum and scale while the row is in cache;
    its vectorised exp is also about twice as fast as ``exp_``), written over the chunk itself:
    on CPU it reads a whole row before writing it. The log-sum-exp comes out of it without a
    separate sum: the largest probability is ``exp(0) / sum``, so ``lse = max - log(max prob)``
    (and it is at least 1/V, so it never underflows). No chunk-sized temporary is made when
    the chunk is fp32 and on the CPU (elsewhere the softmax gets its own output buffer).
    """
    x = logits.float()
    rows = torch.arange(labels.shape[0], device=labels.device)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0)
    target = x[rows, safe]
    row_max = x.amax(dim=1)
    probs = torch.ops.aten._softmax.out(x, 1, False, out=x if x.is_cpu else torch.empty_like(x))
    lse = row_max - probs.amax(dim=1).log()
    ce = torch.where(valid, lse - target, 0.0)
    probs[rows, safe] -= valid.to(probs.dtype)
    return ce, (probs if probs is logits else logits.copy_(probs)), scale


# ---------------------------------------------------------------- per-chunk row work: triton
@triton.jit
def _ce_fwd_kernel(
    logits_ptr,
    labels_ptr,
    ce_ptr,
    lse_ptr,
    vocab,
    stride_row,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    """One program per token: online log-sum-exp over the vocabulary in BLOCK_V blocks."""
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride_row
    offs = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, vocab, BLOCK_V):
        cols = start + offs
        x = tl.load(base + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # lanes that have only seen -inf (masked tail) stay at s = 0 without computing inf - inf
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
    m_all = tl.max(m, axis=0)
    lse = m_all + tl.log(tl.sum(s * tl.exp(m - m_all), axis=0))
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    target = tl.load(base + tl.where(valid, label, 0)).to(tl.float32)
    tl.store(ce_ptr + row, tl.where(valid, lse - target, 0.0))
    tl.store(lse_ptr + row, lse)


@triton.jit
def _ce_bwd_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    grad_ptr,
    vocab,
    stride_row,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    """One program per token, in place: logits -> grad * (exp(logits - lse) - onehot(label))."""
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride_row
    offs = tl.arange(0, BLOCK_V)
    label = tl.load(labels_ptr + row)
    lse = tl.load(lse_ptr + row)
    g = tl.where(label != ignore_index, tl.load(grad_ptr + row).to(tl.float32), 0.0)
    for start in range(0, vocab, BLOCK_V):
        cols = start + offs
        mask = cols < vocab
        x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        d = tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)
        tl.store(base + cols, (d * g).to(logits_ptr.dtype.element_ty), mask=mask)


def _ce_launch_config(vocab: int) -> tuple[int, int]:
    block_v = min(triton.next_power_of_2(vocab), _MAX_BLOCK_V)
    return block_v, min(max(block_v // 512, 1), 16)


def _ce_rows_triton(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    rows, vocab = logits.shape
    ce = torch.empty(rows, dtype=torch.float32, device=logits.device)
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    block_v, warps = _ce_launch_config(vocab)
    _ce_fwd_kernel[(rows,)](
        logits, labels, ce, lse, vocab, logits.stride(0), ignore_index, BLOCK_V=block_v, num_warps=warps
    )
    return ce, lse


def _ce_grad_rows_triton(logits, labels, lse, grad, ignore_index):
    rows, vocab = logits.shape
    block_v, warps = _ce_launch_config(vocab)
    _ce_bwd_kernel[(rows,)](
        logits,
        labels,
        lse,
        grad.contiguous(),
        vocab,
        logits.stride(0),
        ignore_index,
        BLOCK_V=block_v,
        num_warps=warps,
    )
    return logits


def _ce_and_grad_rows_triton(logits, labels, scale, ignore_index):
    """Triton counterpart of :func:`_ce_and_grad_rows_torch` (row factor 1: the kernel scales)."""
    ce, lse = _ce_rows_triton(logits, labels, ignore_index)
    return ce, _ce_grad_rows_triton(logits, labels, lse, scale, ignore_index), None


_ROW_FNS = {"torch": (_ce_rows_torch, _ce_grad_rows_torch), "triton": (_ce_rows_triton, _ce_grad_rows_triton)}
_FWD_GRAD_FNS = {"torch": _ce_and_grad_rows_torch, "triton": _ce_and_grad_rows_triton}


# ---------------------------------------------------------------- chunked drivers
def _accumulate_grads(dlogits, h, weight, grad_h_rows, grad_w, factor=None, first=False) -> None:
    """``grad_h_rows = D @ weight`` and ``grad_w += D.T @ h`` (``=`` when ``first``; each when
    not None) for ``D = factor[:, None] * dlogits`` (``dlogits`` itself when ``factor`` is None)."""
    if factor is not None:
        factor = factor.to(h.dtype).unsqueeze(1)
    if grad_h_rows is not None:
        prod = mm_nn(dlogits, weight)
        if factor is not None:
            torch.mul(prod, factor, out=grad_h_rows)
        else:
            grad_h_rows.copy_(prod)
    if grad_w is not None:
        if factor is not None:
            h = h * factor
        if grad_w.dtype == dlogits.dtype:
            if first:
                torch.mm(dlogits.T, h, out=grad_w)
            else:
                grad_w.addmm_(dlogits.T, h)
        elif first:  # low-precision chunk, fp32 accumulator
            grad_w.copy_(dlogits.T @ h)
        else:
            grad_w += dlogits.T @ h


def _chunks(n: int, chunk: int):
    """(start, end) row ranges of ``chunk`` rows covering ``n``."""
    return ((s, min(s + chunk, n)) for s in range(0, n, chunk))


class _ChunkedLinearCE(torch.autograd.Function):
    """Per-token CE (N,) of ``hidden @ weight.T`` computed ``chunk`` rows at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index: int, chunk: int, backend: str):
        rows_fn, _ = _ROW_FNS[backend]
        n = hidden.shape[0]
        ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for s, e in _chunks(n, chunk):
            ce[s:e], lse[s:e] = rows_fn(mm_nt(hidden[s:e], weight), labels[s:e], ignore_index)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.cfg = (ignore_index, chunk, backend)
        return ce

    @staticmethod
    def backward(ctx, grad_ce):
        hidden, weight, labels, lse = ctx.saved_tensors
        ignore_index, chunk, backend = ctx.cfg
        _, grad_fn = _ROW_FNS[backend]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_ce = grad_ce.to(torch.float32)
        for s, e in _chunks(hidden.shape[0], chunk):
            dlogits = grad_fn(mm_nt(hidden[s:e], weight), labels[s:e], lse[s:e], grad_ce[s:e], ignore_index)
            _accumulate_grads(dlogits, hidden[s:e], weight, grad_h[s:e] if need_h else None, grad_w, first=s == 0)
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


class _LinearCEGradInForward(torch.autograd.Function):
    """Scalar ``sum_i scale_i * ce_i``; the input gradients are computed in forward.

    ``scale`` (N,) fp32 is d(loss)/d(ce_i) (0 at ignored labels). Backward scales the saved
    gradients by the scalar upstream gradient; it can run once (no ``retain_graph``).
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, scale, ignore_index: int, chunk: int, backend: str):
        rows_fn = _FWD_GRAD_FNS[backend]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s, e in _chunks(n, chunk):
            ce, dlogits, factor = rows_fn(mm_nt(hidden[s:e], weight), labels[s:e], scale[s:e], ignore_index)
            loss += (ce * scale[s:e]).sum()
            _accumulate_grads(
                dlogits, hidden[s:e], weight, grad_h[s:e] if need_h else None, grad_w, factor, first=s == 0
            )
        ctx.grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError(
                "fused_linear_cross_entropy: its gradients were already used; "
                "backward through it twice (retain_graph=True) is not supported"
            )
        grads, ctx.grads = ctx.grads, None  # hand the buffers over (autograd can then keep them as .grad)
        unit = bool((grad_loss == 1).all())
        grad_h, grad_w = (t if t is None or unit else t.mul_(grad_loss.to(t.dtype)) for t in grads)
        del grads
        return grad_h, grad_w, None, None, None, None, None


def _fused(hidden, weight, labels, loss_weights, ignore_index, chunk_size, reduction, backend):
    _check(hidden, weight, labels, loss_weights, reduction)
    h2 = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    if h2.shape[0] == 0:
        return _reduce(h2.new_zeros(labels.shape, dtype=torch.float32), labels, loss_weights, ignore_index, reduction)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_size must be >= 1, got {chunk_size}")
    chunk = chunk_size or auto_chunk_size(h2.shape[0], weight.shape[0], weight.shape[1], h2.device.type)
    flat_labels = labels.reshape(-1).contiguous()
    wants_grad = torch.is_grad_enabled() and (h2.requires_grad or weight.requires_grad)
    weights_differentiable = loss_weights is not None and loss_weights.requires_grad
    if reduction != "none" and wants_grad and not weights_differentiable:
        scale = _token_weights(flat_labels, None if loss_weights is None else loss_weights.reshape(-1), ignore_index)
        if reduction == "mean":
            scale = _safe_div(scale, scale.sum())
        return _LinearCEGradInForward.apply(h2, weight, flat_labels, scale, ignore_index, chunk, backend)
    ce = _ChunkedLinearCE.apply(h2, weight, flat_labels, ignore_index, chunk, backend)
    return _reduce(ce.view(labels.shape), labels, loss_weights, ignore_index, reduction)


def fused_linear_cross_entropy_torch(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Chunked pure-torch implementation (the CPU path); see the module docstring."""
    return _fused(hidden, weight, labels, loss_weights, ignore_index, chunk_size, reduction, "torch")


def fused_linear_cross_entropy_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Chunked implementation with Triton online-logsumexp row kernels; same contract."""
    return _fused(hidden, weight, labels, loss_weights, ignore_index, chunk_size, reduction, "triton")
