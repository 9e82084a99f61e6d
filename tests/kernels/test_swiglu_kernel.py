"""SwiGLU: Triton vs torch reference, forward and gradients (fp32)."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines.kernels import swiglu
from xoron_pipelines.kernels.swiglu import swiglu_torch, swiglu_triton

ATOL, RTOL = 1e-5, 1e-5


def test_triton_matches_reference_on_odd_shape(device, check_parity):
    gate = (3 * torch.randn(5, 123, 123, device=device)).requires_grad_()
    up = torch.randn(5, 123, 123, device=device, requires_grad=True)
    check_parity(swiglu_triton, swiglu_torch, [gate, up], ATOL, RTOL)


def test_known_values(device):
    gate = torch.tensor([0.0, 1.0, -2.0], device=device)
    up = torch.tensor([5.0, 2.0, 3.0], device=device)
    expected = torch.tensor([0.0, 2.0 / (1 + torch.e**-1), -6.0 / (1 + torch.e**2)], device=device)
    torch.testing.assert_close(swiglu(gate, up, impl="triton"), expected, atol=1e-6, rtol=1e-6)


def test_mismatched_inputs_rejected(device):
    with pytest.raises(ValueError, match="must match"):
        swiglu_triton(torch.ones(3, device=device), torch.ones(4, device=device))
