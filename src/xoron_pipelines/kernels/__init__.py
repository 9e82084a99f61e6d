"""Fused kernels (Triton) beside their pure-torch references, chosen per call by ``impl``.

Every public function takes ``impl = "auto" | "triton" | "torch"`` (the model config knob
``kernels``); see :mod:`xoron_pipelines.kernels.dispatch` for the rules.
"""

from .dispatch import (
    apply_rope,
    fused_linear_cross_entropy,
    quantize_int8_rows,
    resolve_impl,
    rms_norm,
    router_topk,
    swiglu,
)
from .fused_ce import linear_cross_entropy_naive
from .quant_int8 import dequantize_int8_rows

__all__ = [
    "apply_rope",
    "dequantize_int8_rows",
    "fused_linear_cross_entropy",
    "linear_cross_entropy_naive",
    "quantize_int8_rows",
    "resolve_impl",
    "rms_norm",
    "router_topk",
    "swiglu",
]
