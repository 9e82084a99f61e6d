"""Dense SwiGLU feed-forward block (Llama / DeepSeek ``MLP``: gate_proj, up_proj, down_proj)."""

from __future__ import annotations

import torch
from torch import nn

from xoron_pipelines import kernels


class MLP(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))``; the SwiGLU product runs through ``kernels.swiglu``."""

    def __init__(self, config, intermediate_size: int | None = None) -> None:
        super().__init__()
        hidden = config.hidden_size
        inter = config.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        self.impl = config.kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(kernels.swiglu(self.gate_proj(x), self.up_proj(x), impl=self.impl))
