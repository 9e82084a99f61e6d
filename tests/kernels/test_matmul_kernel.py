"""CPU matmul choice (oneDNN vs torch.mm) and the differentiable ``kernels.linear`` built on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xoron_pipelines.kernels import fused_linear_cross_entropy, linear, linear_cross_entropy_naive, matmul
from xoron_pipelines.model.linear import Linear

ATOL, RTOL = 1e-5, 1e-5


@pytest.mark.parametrize("shape", [(37, 51, 1000), (1, 7, 3), (5, 1, 2), (0, 4, 5), (3, 0, 5), (3, 4, 0)])
def test_products_match_torch_mm(shape):
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    torch.testing.assert_close(matmul.mm_nt(a, b), a @ b.T, atol=ATOL, rtol=RTOL)
    c = torch.randn(k, n, generator=gen)
    torch.testing.assert_close(matmul.mm_nn(a, c), a @ c, atol=ATOL, rtol=RTOL)
    # non-contiguous operands
    torch.testing.assert_close(matmul.mm_nt(a.T.contiguous().T, b), a @ b.T, atol=ATOL, rtol=RTOL)


def test_onednn_used_only_for_fp32_cpu():
    a = torch.randn(3, 4)
    assert matmul.use_onednn(a, a) == matmul.ONEDNN
    assert not matmul.use_onednn(a.double(), a.double())
    assert not matmul.use_onednn(a.bfloat16(), a.bfloat16())
    assert not matmul.use_onednn(a[:, :0], a[:, :0])


@pytest.mark.parametrize("onednn", [True, False])
def test_linear_matches_f_linear_forward_and_backward(check_parity, monkeypatch, onednn):
    monkeypatch.setattr(matmul, "ONEDNN", onednn and matmul.ONEDNN)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 37, generator=gen).requires_grad_()
    w = torch.randn(23, 37, generator=gen).requires_grad_()
    check_parity(linear, F.linear, [x, w], ATOL, RTOL)
    # a non-contiguous input, and each of the two inputs alone needing a gradient
    xt = torch.randn(37, 11, generator=gen).T.requires_grad_()
    check_parity(linear, F.linear, [xt, w], ATOL, RTOL)
    check_parity(linear, F.linear, [x.detach(), w], ATOL, RTOL)
    check_parity(linear, F.linear, [x, w.detach()], ATOL, RTOL)


def test_linear_falls_back_outside_training_fp32():
    x, w, b = torch.randn(4, 6, requires_grad=True), torch.randn(3, 6, requires_grad=True), torch.randn(3)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w), F.linear(x, w))
    assert "LinearFunction" not in type(linear(x, w, b).grad_fn).__name__  # bias: plain F.linear
    assert "LinearFunction" not in type(linear(x.double(), w.double()).grad_fn).__name__
    if matmul.ONEDNN:
        assert "LinearFunction" in type(linear(x, w).grad_fn).__name__


def test_linear_module_is_an_nn_linear_with_its_parameters():
    torch.manual_seed(0)
    ours = Linear(8, 5, bias=False)
    torch.manual_seed(0)
    ref = torch.nn.Linear(8, 5, bias=False)
    assert isinstance(ours, torch.nn.Linear)
    assert list(ours.state_dict()) == ["weight"] and torch.equal(ours.weight, ref.weight)
    x = torch.randn(2, 8, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("onednn", [True, False])
def test_fused_ce_same_with_either_matmul(monkeypatch, onednn):
    monkeypatch.setattr(matmul, "ONEDNN", onednn and matmul.ONEDNN)
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(45, 33, generator=gen).requires_grad_()
    weight = (0.3 * torch.randn(301, 33, generator=gen)).requires_grad_()
    labels = torch.randint(0, 301, (45,), generator=gen)
    labels[[3, 9]] = -100
    got = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=16, impl="torch")
    ref = linear_cross_entropy_naive(hidden, weight, labels)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
    g_got = torch.autograd.grad(got, (hidden, weight))
    g_ref = torch.autograd.grad(ref, (hidden, weight))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)
