"""Matrix products of the CPU training path: oneDNN where it beats the default BLAS.

Contract: :func:`mm_nt` (``a @ b.T``) and :func:`mm_nn` (``a @ b``) take 2-D tensors and return a
new contiguous product, exactly what ``torch.mm`` returns. fp32 operands on the CPU go through
oneDNN (``torch.ops.mkldnn._linear_pointwise``, the op Inductor lowers CPU linears to; exact fp32
products); other devices and dtypes, a zero-sized contraction (oneDNN rejects it), a PyTorch
built without oneDNN, or :data:`ONEDNN` switched off fall back to ``torch.mm``. No autograd: they
are for the insides of ``autograd.Function`` s (the fused LM-head loss), whose weight-gradient
form stays ``addmm_`` (MKL is faster there).

oneDNN only returns new tensors (no ``out=``), so callers size their products to stay under
glibc's 32 MiB mmap threshold (a larger fresh block is a new mapping, and page faults, every call).
Measurements behind these choices (oneDNN vs MKL per product shape, the decoder ``nn.Linear``
variant that was tried and not kept): benchmarks/RESULTS.md, "Follow-up: LM-head kernel work".
"""

from __future__ import annotations

import torch

try:
    _LINEAR = torch.ops.mkldnn._linear_pointwise
except (AttributeError, RuntimeError):  # PyTorch built without oneDNN
    _LINEAR = None

ONEDNN: bool = _LINEAR is not None and torch.backends.mkldnn.is_available()
"""Use oneDNN for fp32 CPU products (set False to compare against / fall back to ``torch.mm``)."""


def use_onednn(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a @ b.T`` (both 2-D) runs through oneDNN rather than ``torch.mm``."""
    return (
        ONEDNN
        and _LINEAR is not None
        and a.device.type == "cpu"
        and b.device.type == "cpu"
        and a.dtype == torch.float32
        and b.dtype == torch.float32
        and a.shape[1] > 0
    )


def mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for ``a`` (M, K) and ``b`` (N, K): a new contiguous (M, N) tensor."""
    if use_onednn(a, b):
        return _LINEAR(a, b, None, "none", [], "")
    return torch.mm(a, b.T)


def mm_nn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``a`` (M, K) and ``b`` (K, N): a new contiguous (M, N) tensor."""
    return mm_nt(a, b.T)
