"""Matrix products of the CPU training path: oneDNN where it beats the default BLAS.

``torch.mm`` / ``F.linear`` on CPU call MKL's sgemm. For fp32 on the CPU this module calls
oneDNN instead, through ``torch.ops.mkldnn._linear_pointwise`` (the op Inductor lowers CPU
linears to; plain dense fp32 tensors in and out, exact fp32 products). Measured on the project's
2-core AMD EPYC (Zen 4) box, 1 thread, CPU time:

* LM-head logits ``h @ W.T``, (128 x 256) @ (256 x 32000): oneDNN about 100 GFLOPS, MKL 77;
  (256 x 256) @ (256 x 32000): 101 vs 88.
* the LM-head input gradient ``D @ W``, (128 x 32000) @ (32000 x 256): 99 vs 89.
* the weight-gradient form ``D.T @ h`` is the exception (oneDNN 76-83, MKL 96-100), so
  gradient accumulation stays ``addmm_``.

oneDNN only returns new tensors (no ``out=``), so callers size their products to stay well
under glibc's 32 MiB mmap threshold: a larger fresh block is a new mapping every call, and its
page faults cost more than the faster kernel saves.

``mm_nt`` / ``mm_nn`` fall back to ``torch.mm`` on other devices and dtypes, when an operand
has a zero-sized contraction (oneDNN rejects it), when the op is missing (PyTorch built
without oneDNN) or when :data:`ONEDNN` is switched off. They carry no autograd: they are for
the insides of ``autograd.Function`` s (the fused LM-head loss).

Not used for the decoder's ``nn.Linear`` layers: an autograd wrapper (oneDNN forward and input
gradient, MKL weight gradient) made the dense 256 -> 1024 SwiGLU block 5-8% faster, but was
neutral for the MoE block and 3% slower for the MLA projections at 2 threads (oneDNN's per-call
cost, a weight reorder each call, outweighs the faster kernel on small weights); decoder-wide
it was within noise, so it was not kept.
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
    return (ONEDNN and _LINEAR is not None and a.device.type == "cpu" and b.device.type == "cpu"
            and a.dtype == torch.float32 and b.dtype == torch.float32 and a.shape[1] > 0)


def mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for ``a`` (M, K) and ``b`` (N, K): a new contiguous (M, N) tensor."""
    if use_onednn(a, b):
        return _LINEAR(a, b, None, "none", [], "")
    return torch.mm(a, b.T)


def mm_nn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``a`` (M, K) and ``b`` (K, N): a new contiguous (M, N) tensor."""
    return mm_nt(a, b.T)
