"""``Linear``: ``nn.Linear`` whose training forward runs :func:`xoron_pipelines.kernels.linear`.

Same parameters, state-dict names, initialisation and ``isinstance(m, nn.Linear)`` as the torch
class (so interop, peft/LoRA wrapping and transformers' init treat it as one); only the product
differs: bias-free fp32 CPU layers being trained run oneDNN instead of MKL (see
:mod:`xoron_pipelines.kernels.matmul` for the measurements). Everything else is ``F.linear``.
"""

from __future__ import annotations

import torch
from torch import nn

from xoron_pipelines import kernels


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)
