"""Router top-k: Triton vs torch reference, ties, bias-only selection, gradient routing."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines.kernels import router_topk
from xoron_pipelines.kernels.router_topk import router_topk_torch, router_topk_triton


@pytest.mark.parametrize("with_bias", [False, True])
def test_triton_matches_reference(device, check_parity, with_bias):
    scores = torch.rand(37, 13, device=device, requires_grad=True)
    bias = 0.2 * torch.randn(13, device=device) if with_bias else None
    check_parity(lambda s: router_topk_triton(s, bias, 3), lambda s: router_topk_torch(s, bias, 3), [scores], 0, 0)


def test_agrees_with_torch_topk_without_ties(device):
    scores = torch.randn(37, 13, device=device)
    bias = 0.3 * torch.randn(13, device=device)
    expected = torch.topk(scores + bias, 4, dim=-1).indices
    for impl in ("triton", "torch"):
        weights, idx = router_topk(scores, bias, 4, impl=impl)
        assert torch.equal(idx, expected)
        assert torch.equal(weights, scores.gather(1, expected))


def test_ties_pick_lower_index_first(device):
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1], [0.2, 0.2, 0.2, 0.2]], device=device)
    for impl in ("triton", "torch"):
        weights, idx = router_topk(scores, None, 3, impl=impl)
        assert idx.tolist() == [[1, 2, 0], [0, 1, 2]]
        torch.testing.assert_close(weights, torch.tensor([[0.9, 0.9, 0.5], [0.2, 0.2, 0.2]], device=device))


def test_bias_changes_selection_not_returned_scores(device):
    scores = torch.tensor([[0.5, 0.9, 0.8, 0.1]], device=device)
    bias = torch.tensor([1.0, 0.0, 0.0, 0.5], device=device)
    for impl in ("triton", "torch"):
        weights, idx = router_topk(scores, bias, 2, impl=impl)
        assert idx.tolist() == [[0, 1]]  # biased: 1.5, 0.9, 0.8, 0.6
        torch.testing.assert_close(weights, torch.tensor([[0.5, 0.9]], device=device))


def test_gradient_reaches_only_selected_scores(device):
    for impl in ("triton", "torch"):
        scores = torch.rand(6, 8, device=device, requires_grad=True)
        bias = torch.zeros(8, device=device, requires_grad=True)
        weights, idx = router_topk(scores, bias, 2, impl=impl)
        (weights * torch.arange(1.0, 3.0, device=device)).sum().backward()
        upstream = torch.tensor([1.0, 2.0], device=device).expand(6, 2)
        expected = torch.zeros(6, 8, device=device).scatter(1, idx, upstream)
        assert torch.equal(scores.grad, expected)
        assert bias.grad is None or not bias.grad.any()


def test_invalid_k_rejected(device):
    with pytest.raises(ValueError, match="k=5"):
        router_topk(torch.rand(2, 4, device=device), None, 5, impl="triton")
