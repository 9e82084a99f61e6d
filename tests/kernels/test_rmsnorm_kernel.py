"""RMSNorm: Triton vs torch (hand-written backward) vs the plain reference vs HF LlamaRMSNorm."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from xoron_pipelines.kernels import rms_norm, rmsnorm
from xoron_pipelines.kernels.rmsnorm import rms_norm_reference, rms_norm_torch, rms_norm_triton

ATOL, RTOL = 1e-5, 1e-5


def test_triton_matches_reference_on_odd_shape(device, check_parity):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 123, 123, generator=gen).to(device).requires_grad_()
    w = (1 + 0.1 * torch.randn(123, generator=gen)).to(device).requires_grad_()
    check_parity(lambda a, b: rms_norm_triton(a, b, 1e-5), lambda a, b: rms_norm_torch(a, b, 1e-5), [x, w], ATOL, RTOL)


def test_more_row_blocks_than_backward_programs(device, check_parity, monkeypatch):
    """Each backward program loops over several row blocks and sums their dw partials."""
    monkeypatch.setattr(rmsnorm, "_MAX_BWD_PROGRAMS", 3)
    x = torch.randn(103, 3, device=device, requires_grad=True)  # 7 blocks of 16 rows
    w = torch.randn(3, device=device, requires_grad=True)
    check_parity(rms_norm_triton, rms_norm_torch, [x, w], ATOL, RTOL)


def test_reference_matches_hf_llama_rmsnorm_and_formula():
    x = torch.randn(3, 7, 33, dtype=torch.float64)
    norm = LlamaRMSNorm(33, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(33))
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(rms_norm_torch(x, norm.weight, 1e-6), norm(x))
    # HF (and so the reference) computes the statistic in fp32 even for fp64 input
    torch.testing.assert_close(rms_norm(x, norm.weight, 1e-6, impl="torch"), expected, atol=1e-6, rtol=1e-6)


def test_eps_takes_effect(device):
    x = torch.full((2, 8), 1e-3, device=device)
    w = torch.ones(8, device=device)
    small, large = rms_norm(x, w, 1e-12, impl="triton"), rms_norm(x, w, 1e-2, impl="triton")
    torch.testing.assert_close(small, torch.ones_like(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(large, x / (1e-6 + 1e-2) ** 0.5, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype", "tol"),
    [
        (torch.float32, torch.float32, 1e-5),
        (torch.float64, torch.float64, 1e-6),  # statistic in fp32, as HF does
        (torch.bfloat16, torch.float32, 1e-2),
        (torch.bfloat16, torch.bfloat16, 1e-2),
    ],
)
def test_torch_backward_matches_autograd_of_reference(check_parity, x_dtype, w_dtype, tol):
    """The hand-written backward against autograd through the plain expression, odd shapes."""
    gen = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(3, 5, 37, generator=gen)).to(x_dtype).requires_grad_()
    w = (1 + 0.3 * torch.randn(37, generator=gen)).to(w_dtype).requires_grad_()
    check_parity(lambda a, b: rms_norm_torch(a, b, 1e-5), lambda a, b: rms_norm_reference(a, b, 1e-5), [x, w], tol, tol)
    assert torch.equal(rms_norm_torch(x, w, 1e-5), rms_norm_reference(x, w, 1e-5))  # same forward ops


def test_torch_backward_one_input_needing_grad(check_parity):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, 19, generator=gen)
    w = torch.randn(19, generator=gen)
    for needs in ((True, False), (False, True)):
        inputs = [x.clone().requires_grad_(needs[0]), w.clone().requires_grad_(needs[1])]
        check_parity(rms_norm_torch, rms_norm_reference, inputs, ATOL, RTOL)
    with torch.no_grad():  # nothing recorded: the plain expression runs
        assert rms_norm_torch(x.requires_grad_(), w).grad_fn is None
