"""CPU matmul choice (oneDNN vs torch.mm) used by the fused LM-head loss."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines.kernels import fused_linear_cross_entropy, linear_cross_entropy_naive, matmul

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
