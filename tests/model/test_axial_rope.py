"""Axial (2D / 3D) RoPE: a rotation per axis slice, relative in every axis, matching 1D RoPE on one axis."""

import torch

from xoron_pipelines.kernels.rope import apply_rope_torch
from xoron_pipelines.model.rope import apply_axial_rope, axial_rope_cos_sin, axial_rope_freqs, grid_coords


def _rotate(x, coords, inv):
    cos, sin = axial_rope_cos_sin(coords, inv)
    return apply_axial_rope(x, cos, sin, inv)


def test_axial_rope_is_relative_in_every_axis_and_keeps_norms():
    torch.manual_seed(0)
    inv = axial_rope_freqs(24, 3)
    coords = grid_coords(2, 3, 4)
    q, k = torch.randn(2, 1, 2, 24, 24).unbind(0)
    scores = _rotate(q, coords, inv) @ _rotate(k, coords, inv).transpose(-1, -2)
    for shift in ([5, 0, 0], [0, 7, 0], [0, 0, 3], [1, 2, 9]):
        moved = coords + torch.tensor(shift)
        shifted = _rotate(q, moved, inv) @ _rotate(k, moved, inv).transpose(-1, -2)
        torch.testing.assert_close(shifted, scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_rotate(q, coords, inv).norm(dim=-1), q.norm(dim=-1), rtol=1e-5, atol=1e-5)
    # a shift of one axis only relative to the other tokens changes the scores
    moved = coords.clone()
    moved[0, 2] += 1
    assert not torch.allclose(_rotate(q, moved, inv) @ _rotate(k, coords, inv).transpose(-1, -2), scores)


def test_one_axis_equals_plain_rope():
    torch.manual_seed(1)
    inv = axial_rope_freqs(16, 1, theta=10000.0)
    pos = torch.arange(7)
    x = torch.randn(1, 2, 7, 16)
    f = pos[:, None].float() * inv[0]
    emb = torch.cat((f, f), -1)
    ref = apply_rope_torch(x, emb.cos()[None], emb.sin()[None])
    torch.testing.assert_close(_rotate(x, pos[:, None], inv), ref)


def test_head_dim_split_and_errors():
    assert [2 * f.numel() for f in axial_rope_freqs(20, 3)] == [8, 6, 6]
    for bad in ((7, 2), (4, 3)):
        try:
            axial_rope_freqs(*bad)
        except ValueError as err:
            assert "head_dim" in str(err)
        else:
            raise AssertionError(bad)
