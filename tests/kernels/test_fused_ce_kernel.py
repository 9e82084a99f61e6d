"""Fused linear cross-entropy: Triton vs chunked torch vs naive unfused, weights and ignore_index."""

from __future__ import annotations

import math

import pytest
import torch

from xoron_pipelines.kernels import fused_ce, fused_linear_cross_entropy, linear_cross_entropy_naive
from xoron_pipelines.kernels.fused_ce import (
    cpu_chunk_size,
    default_chunk_size,
    fused_linear_cross_entropy_torch,
    fused_linear_cross_entropy_triton,
)

N, H, V = 37, 51, 1000
ATOL, RTOL = 1e-5, 1e-5


def _inputs(device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen).to(device).requires_grad_()
    weight = (0.2 * torch.randn(V, H, generator=gen)).to(device).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[[0, 7, 8, 30]] = -100
    loss_weights = torch.rand(N, generator=gen)
    return hidden, weight, labels.to(device), loss_weights.to(device)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_triton_and_chunked_torch_match_naive(device, check_parity, monkeypatch, reduction, weighted):
    # 128-wide vocab blocks: 8 online-logsumexp steps per row with a masked tail
    monkeypatch.setattr(fused_ce, "_MAX_BLOCK_V", 128)
    hidden, weight, labels, lw = _inputs(device)
    lw = lw if weighted else None

    def naive(h, w):
        return linear_cross_entropy_naive(h, w, labels, lw, reduction=reduction)

    for fn in (fused_linear_cross_entropy_triton, fused_linear_cross_entropy_torch):

        def fused(h, w, fn=fn):
            return fn(h, w, labels, lw, chunk_size=8, reduction=reduction)

        check_parity(fused, naive, [hidden, weight], ATOL, RTOL)


def test_hand_computed_case(device):
    """logits rows [1,0,0], [0,2,0], [0,0,0]; labels 0, 2, ignored; weights 2, 1, 5."""
    hidden = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], device=device)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], device=device)
    labels = torch.tensor([0, 2, -100], device=device)
    lw = torch.tensor([2.0, 1.0, 5.0], device=device)
    ce0 = math.log(math.e + 2) - 1
    ce1 = math.log(2 + math.e**2)
    for impl in ("triton", "torch"):
        kw = dict(loss_weights=lw, chunk_size=2, impl=impl)
        per_tok = fused_linear_cross_entropy(hidden, weight, labels, reduction="none", **kw)
        torch.testing.assert_close(per_tok, torch.tensor([2 * ce0, ce1, 0.0], device=device))
        total = fused_linear_cross_entropy(hidden, weight, labels, reduction="sum", **kw)
        torch.testing.assert_close(total, torch.tensor(2 * ce0 + ce1, device=device))
        mean = fused_linear_cross_entropy(hidden, weight, labels, reduction="mean", **kw)
        torch.testing.assert_close(mean, torch.tensor((2 * ce0 + ce1) / 3, device=device))
        unweighted = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=2, impl=impl)
        torch.testing.assert_close(unweighted, torch.tensor((ce0 + ce1) / 2, device=device))


def test_custom_ignore_index_and_all_ignored(device):
    hidden, weight, labels, _ = _inputs(device, seed=1)
    labels = labels.clamp_min(0)
    labels[:5] = 3
    for impl in ("triton", "torch"):
        got = fused_linear_cross_entropy(hidden, weight, labels, ignore_index=3, chunk_size=16, impl=impl)
        ref = torch.nn.functional.cross_entropy(hidden @ weight.T, labels, ignore_index=3)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
        # everything ignored: loss 0 and zero gradients instead of NaN
        none = torch.full_like(labels, -100)
        loss = fused_linear_cross_entropy(hidden, weight, none, chunk_size=16, impl=impl)
        grads = torch.autograd.grad(loss, (hidden, weight))
        assert loss.item() == 0.0 and all(not g.any() for g in grads)


def test_large_logits_are_stable(device):
    hidden, weight, labels, _ = _inputs(device, seed=2)
    hidden = (50 * hidden).detach()
    ref = linear_cross_entropy_naive(hidden.double(), weight.detach().double(), labels)
    for impl in ("triton", "torch"):
        got = fused_linear_cross_entropy(hidden, weight.detach(), labels, chunk_size=8, impl=impl)
        assert torch.isfinite(got)
        torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=1e-5)


def test_batched_input_and_default_chunk(device):
    hidden, weight, labels, _ = _inputs(device, seed=3)
    h3, l3 = hidden[:36].reshape(4, 9, H), labels[:36].reshape(4, 9)
    for impl in ("triton", "torch"):
        got = fused_linear_cross_entropy(h3, weight, l3, reduction="none", impl=impl)
        assert got.shape == (4, 9)
        ref = linear_cross_entropy_naive(h3, weight, l3, reduction="none")
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
    assert default_chunk_size(2048, 32000, 512) == 128  # 4M-logit budget
    assert default_chunk_size(8192, 32000, 4096) == 1024  # about N * H logits
    assert default_chunk_size(10, 1000, 64) == 10
    assert default_chunk_size(5000, 1 << 30, 64) == 1
    # CPU: equal chunks of at most 6M logits, no power-of-two rounding
    assert cpu_chunk_size(1020, 32000) == 170  # 6 chunks (at most 196 rows each)
    assert cpu_chunk_size(196, 32000) == 196 and cpu_chunk_size(197, 32000) == 99
    assert cpu_chunk_size(10, 1000) == 10
    assert cpu_chunk_size(5000, 1 << 30) == 1


def test_frozen_weight_gets_no_gradient(device):
    hidden, weight, labels, _ = _inputs(device, seed=4)
    weight = weight.detach()
    loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=8, impl="triton")
    (grad_h,) = torch.autograd.grad(loss, hidden)
    (ref,) = torch.autograd.grad(linear_cross_entropy_naive(hidden, weight, labels), hidden)
    torch.testing.assert_close(grad_h, ref, atol=ATOL, rtol=RTOL)


def test_bad_arguments_rejected(device):
    hidden, weight, labels, _ = _inputs(device)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(hidden, weight, labels, reduction="avg", impl="torch")
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_cross_entropy(hidden, weight, labels, chunk_size=0, impl="torch")
    with pytest.raises(ValueError, match="labels"):
        fused_linear_cross_entropy(hidden, weight, labels[:-1], impl="torch")


def test_bf16_inputs_with_fp32_weight_gradient_accumulator():
    """A bf16 chunk: the row work runs on an fp32 copy, the first chunk writes the fp32 grad_w."""
    hidden, weight, labels, _ = _inputs("cpu", seed=4)
    h16, w16 = (t.detach().bfloat16().requires_grad_() for t in (hidden, weight))
    got = fused_linear_cross_entropy(h16, w16, labels.cpu(), chunk_size=8, impl="torch")
    ref = linear_cross_entropy_naive(h16.detach().float().requires_grad_(), w16.detach().float(), labels.cpu())
    torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)
    got.backward()
    h32, w32 = (t.detach().float().requires_grad_() for t in (h16, w16))
    linear_cross_entropy_naive(h32, w32, labels.cpu()).backward()
    assert h16.grad.dtype == w16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(h16.grad.float(), h32.grad, atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(w16.grad.float(), w32.grad, atol=2e-2, rtol=5e-2)


def test_gradients_with_very_confident_wrong_predictions():
    """Target probabilities far below fp32's normal range: the loss and gradients stay exact
    (the log-sum-exp comes from the row maximum's probability, not the target's)."""
    hidden, weight, labels, _ = _inputs("cpu", seed=5)
    hidden = (60 * hidden).detach().requires_grad_()
    got = fused_linear_cross_entropy(hidden, weight, labels.cpu(), chunk_size=8, impl="torch")
    ref = linear_cross_entropy_naive(hidden.double(), weight.double(), labels.cpu())
    assert torch.isfinite(got) and got.item() > 100
    torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(got, (hidden, weight)), torch.autograd.grad(ref, (hidden, weight))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
