"""Normalisation layers: RMSNorm (through ``kernels.rms_norm``) and LayerNorm, chosen by config."""

from __future__ import annotations

import torch
from torch import nn

from xoron_pipelines import kernels


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` (Llama / DeepSeek); computed by the kernel dispatcher."""

    def __init__(self, dim: int, eps: float = 1e-6, impl: str = "auto") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps, impl=self.impl)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.LayerNorm):
    """Standard LayerNorm with weight and bias (``norm_type: layernorm``)."""


def build_norm(config, dim: int | None = None, eps: float | None = None) -> nn.Module:
    """The normalisation layer ``config.norm_type`` asks for, over ``dim`` (default hidden_size)."""
    dim = config.hidden_size if dim is None else dim
    eps = config.norm_eps if eps is None else eps
    if config.norm_type == "layernorm":
        return LayerNorm(dim, eps=eps)
    return RMSNorm(dim, eps=eps, impl=config.kernels)
