"""int8 row quantisation: exact Triton/torch agreement, rounding, error bounds, zero rows."""

from __future__ import annotations

import torch

from xoron_pipelines.kernels import dequantize_int8_rows, quantize_int8_rows
from xoron_pipelines.kernels.quant_int8 import quantize_int8_rows_torch, quantize_int8_rows_triton


def test_triton_equals_reference_bit_for_bit(device):
    x = torch.randn(37, 123, device=device) * torch.logspace(-3, 3, 37, device=device)[:, None]
    q_t, s_t = quantize_int8_rows_triton(x)
    q_r, s_r = quantize_int8_rows_torch(x)
    assert q_t.dtype == torch.int8 and s_t.dtype == torch.float32
    assert s_t.shape == (37,) and q_t.shape == (37, 123)
    assert torch.equal(q_t, q_r) and torch.equal(s_t, s_r)


def test_round_to_nearest_ties_away_from_zero(device):
    # absmax 127 gives scale exactly 1, so the rounding rule is visible
    x = torch.tensor([[127.0, -63.5, 31.75, 0.0, 2.5, -0.49]], device=device)
    for impl in ("triton", "torch"):
        q, scale = quantize_int8_rows(x, impl=impl)
        assert scale.tolist() == [1.0]
        assert q.tolist() == [[127, -64, 32, 0, 3, 0]]


def test_round_trip_error_bound_and_cosine(device):
    x = torch.randn(2, 37, 123, device=device)
    for impl in ("triton", "torch"):
        q, scale = quantize_int8_rows(x, impl=impl)
        assert scale.shape == (2, 37)
        assert int(q.abs().amax(-1).min()) == 127  # each row's absmax maps to +-127
        back = dequantize_int8_rows(q, scale)
        assert ((back - x).abs() <= scale[..., None] / 2 + 1e-6).all()
        cos = torch.nn.functional.cosine_similarity(back.flatten(0, 1), x.flatten(0, 1), dim=-1)
        assert cos.min() >= 0.999


def test_zero_rows_have_unit_scale_and_no_nan(device):
    x = torch.randn(4, 9, device=device)
    x[1] = 0
    for impl in ("triton", "torch"):
        q, scale = quantize_int8_rows(x, impl=impl)
        assert scale[1] == 1.0 and (q[1] == 0).all()
        assert torch.isfinite(dequantize_int8_rows(q, scale)).all()


def test_not_differentiable(device):
    x = torch.randn(3, 5, device=device, requires_grad=True)
    for impl in ("triton", "torch"):
        q, scale = quantize_int8_rows(x, impl=impl)
        assert not q.requires_grad and not scale.requires_grad
