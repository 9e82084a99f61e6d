"""Choose between the Triton kernels and their pure-torch references.

The model config knob ``kernels: auto | triton | torch`` ends up as the ``impl`` argument of
every public kernel function. ``resolve_impl`` turns it into the implementation actually run:

* ``"torch"``  - always the pure-torch reference (works on any device, autograd by torch);
* ``"triton"`` - the Triton kernels; on CUDA tensors they are compiled, on CPU tensors they only
  run through Triton's interpreter, which must be switched on with ``TRITON_INTERPRET=1``
  *before* triton is first imported (triton decides compile vs interpret when a kernel is
  decorated);
* ``"auto"``   - Triton when every tensor lives on CUDA and triton is importable, torch otherwise
  (so CPU runs, including interpreted ones, default to the reference).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

from .fused_ce import Reduction, fused_linear_cross_entropy_torch, fused_linear_cross_entropy_triton
from .quant_int8 import quantize_int8_rows_torch, quantize_int8_rows_triton
from .rmsnorm import rms_norm_torch, rms_norm_triton
from .rope import apply_rope_torch, apply_rope_triton
from .router_topk import router_topk_torch, router_topk_triton
from .swiglu import swiglu_torch, swiglu_triton

IMPLS = ("auto", "triton", "torch")

Impl = Literal["auto", "triton", "torch"]


def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "yes", "on"}


def resolve_impl(impl: str, *tensors: torch.Tensor | None) -> Literal["triton", "torch"]:
    """Return ``"triton"`` or ``"torch"`` for ``impl`` given the tensors a kernel will touch.

    ``None`` entries (optional arguments) are ignored. Raises ``ValueError`` for an unknown
    ``impl`` and ``RuntimeError`` when ``"triton"`` is asked for where it cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown kernel implementation {impl!r}; expected one of {IMPLS}")
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    if impl == "torch":
        return "torch"
    if impl == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError("kernels='triton' was requested but the triton package is not installed")
    if not on_cuda and not triton_interpreting():
        raise RuntimeError(
            "kernels='triton' on CPU tensors needs Triton's interpreter: set the environment "
            "variable TRITON_INTERPRET=1 before triton is imported (or use kernels='torch'/'auto')"
        )
    return "triton"


# --------------------------------------------------------------------------- public functions
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, impl: Impl = "auto") -> torch.Tensor:
    """RMSNorm over the last dim, HF LlamaRMSNorm semantics (fp32 statistic)."""
    fn = rms_norm_triton if resolve_impl(impl, x, weight) == "triton" else rms_norm_torch
    return fn(x, weight, eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, impl: Impl = "auto") -> torch.Tensor:
    """RoPE, HF rotate_half convention; x (B, heads, T, D), cos/sin (B or 1, T, D)."""
    fn = apply_rope_triton if resolve_impl(impl, x, cos, sin) == "triton" else apply_rope_torch
    return fn(x, cos, sin)


def swiglu(gate: torch.Tensor, up: torch.Tensor, impl: Impl = "auto") -> torch.Tensor:
    """``silu(gate) * up``."""
    fn = swiglu_triton if resolve_impl(impl, gate, up) == "triton" else swiglu_torch
    return fn(gate, up)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
    impl: Impl = "auto",
) -> torch.Tensor:
    """CE of ``hidden @ weight.T`` against ``labels`` without materialising N x V logits."""
    use_triton = resolve_impl(impl, hidden, weight, labels, loss_weights) == "triton"
    fn = fused_linear_cross_entropy_triton if use_triton else fused_linear_cross_entropy_torch
    return fn(hidden, weight, labels, loss_weights, ignore_index, chunk_size, reduction)


def router_topk(
    scores: torch.Tensor, bias: torch.Tensor | None, k: int, impl: Impl = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts by ``scores + bias``; returns (unbiased scores (N, k), indices (N, k))."""
    fn = router_topk_triton if resolve_impl(impl, scores, bias) == "triton" else router_topk_torch
    return fn(scores, bias, k)


def quantize_int8_rows(x: torch.Tensor, impl: Impl = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8, scale float32 per row). Not differentiable."""
    fn = quantize_int8_rows_triton if resolve_impl(impl, x) == "triton" else quantize_int8_rows_torch
    return fn(x)
