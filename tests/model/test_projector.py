"""Projectors: any number of encoder features to a fixed number of LLM tokens; padding ignored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xoron_pipelines.model.projector import MLPProjector, PerceiverResampler, build_projector, masked_adaptive_avg_pool

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _projectors():
    torch.manual_seed(0)
    return [PerceiverResampler(24, 32, num_tokens=5, num_layers=2, num_heads=4), MLPProjector(24, 32, num_tokens=5)]


@pytest.mark.parametrize("n", [1, 3, 17])
def test_any_number_of_features_gives_num_tokens(n):
    for proj in _projectors():
        assert proj(torch.randn(2, n, 24)).shape == (2, 5, 32)


def test_padding_frames_do_not_change_the_output():
    """An item padded to the batch length (mask False on the padding) gives what it gives alone,
    whatever the padding holds (zeros, large values, NaN)."""
    torch.manual_seed(1)
    short = torch.randn(1, 6, 24)
    other = torch.randn(1, 10, 24)
    mask = torch.tensor([[True] * 6 + [False] * 4, [True] * 10])
    for proj in _projectors():
        outs = []
        for fill in (0.0, 1e4, float("nan")):
            padded = torch.cat((short, torch.full((1, 4, 24), fill)), dim=1)
            outs.append(proj(torch.cat((padded, other)), mask))
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
        torch.testing.assert_close(outs[0][:1], proj(short), rtol=0, atol=1e-5)
        torch.testing.assert_close(outs[0][1:], proj(other), rtol=0, atol=1e-5)


def test_padding_changes_the_output_without_a_mask():
    """The mask is what protects the output: without it the padding is read (so the test above can fail)."""
    torch.manual_seed(2)
    short = torch.randn(1, 6, 24)
    padded = torch.cat((short, torch.randn(1, 4, 24)), dim=1)
    for proj in _projectors():
        assert not torch.allclose(proj(padded), proj(short), atol=1e-3)


@pytest.mark.parametrize("n", [3, 5, 16, 23])
def test_masked_pool_matches_adaptive_avg_pool(n):
    x = torch.randn(2, n, 7)
    expected = F.adaptive_avg_pool1d(x.transpose(1, 2), 5).transpose(1, 2)
    torch.testing.assert_close(masked_adaptive_avg_pool(x, 5), expected, rtol=0, atol=1e-6)


def test_masked_pool_uses_valid_tokens_only_and_empty_items_pool_to_zero():
    x = torch.randn(2, 9, 3)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, [1, 4, 5, 8]] = True  # scattered valid tokens keep their order
    out = masked_adaptive_avg_pool(x, 2, mask)
    torch.testing.assert_close(out[0], torch.stack((x[0, [1, 4]].mean(0), x[0, [5, 8]].mean(0))))
    assert torch.equal(out[1], torch.zeros(2, 3))


def test_mlp_projector_is_mlp_then_pool():
    proj = MLPProjector(24, 32, num_tokens=4)
    x = torch.randn(2, 11, 24)
    expected = F.adaptive_avg_pool1d(proj.mlp(x).transpose(1, 2), 4).transpose(1, 2)
    torch.testing.assert_close(proj(x), expected, rtol=0, atol=1e-6)


def test_build_and_bad_input_errors():
    assert isinstance(build_projector("perceiver", 8, 16, 3), PerceiverResampler)
    assert isinstance(build_projector("mlp", 8, 16, 3), MLPProjector)
    with pytest.raises(ValueError, match="projector_type 'conv'"):
        build_projector("conv", 8, 16, 3)
    with pytest.raises(ValueError, match="not divisible by projector_heads 3"):
        PerceiverResampler(8, 16, 3, num_heads=3)
    with pytest.raises(ValueError, match=r"features \(B, N, 8\)"):
        build_projector("mlp", 8, 16, 3)(torch.randn(2, 4, 9))
    with pytest.raises(ValueError, match="mask shape"):
        build_projector("perceiver", 8, 16, 3)(torch.randn(2, 4, 8), torch.ones(2, 5, dtype=torch.bool))
