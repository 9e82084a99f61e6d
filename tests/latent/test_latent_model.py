"""Latent modules on their own (no encoder / decoder load): shapes, normalisation, stop latent,
attention backends, RoPE / norm switches and parameter validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from xoron_pipelines.latent import losses
from xoron_pipelines.latent.model import (
    Attention, Compression, LatentConfig, MiddleTransformer, PrefixAdapter, make_stop_latent)

BASE = LatentConfig(encoder_model="x", encoder_hidden=12, decoder_hidden=8, latent_dim=8, latent_seq_len=3,
                    prefix_len=5, middle_hidden_dim=10, middle_layers=3, middle_transformer_layers=2,
                    middle_num_heads=2, adapter_num_heads=2, middle_dropout=0.0, adapter_dropout=0.0)


def cfg(**kw) -> LatentConfig:
    return dataclasses.replace(BASE, **kw)


@pytest.mark.parametrize("L,D", [(3, 8), (5, 4)])
def test_latent_shape_follows_latent_seq_len_and_dim(L, D):
    torch.manual_seed(0)
    comp = Compression(cfg(latent_seq_len=L, latent_dim=D))
    z = comp(torch.randn(2, 12))
    assert z.shape == (2, L, D)
    assert comp.reconstruct(z).shape == (2, 12)
    assert MiddleTransformer(cfg(latent_seq_len=L, latent_dim=D)).eval()(z).shape == (2, L, D)


def test_middle_layers_sets_the_compression_mlp_depth():
    linears = [m for m in Compression(cfg(middle_layers=4)).mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 10), (10, 10), (10, 10), (10, 24)]


def test_normalize_latent_gives_unit_norms_only_when_on():
    torch.manual_seed(0)
    x = torch.randn(4, 12) * 5
    on = Compression(cfg(normalize_latent=True))
    off = Compression(cfg(normalize_latent=False))
    off.load_state_dict(on.state_dict())
    assert torch.allclose(on(x).norm(dim=-1), torch.ones(4, 3), atol=1e-5)
    assert not torch.allclose(off(x).norm(dim=-1), torch.ones(4, 3), atol=1e-2)
    mid = MiddleTransformer(cfg()).eval()
    assert torch.allclose(mid(on(x)).norm(dim=-1), torch.ones(4, 3), atol=1e-5)


def test_stop_latent_init_and_seed_are_deterministic():
    a, b = make_stop_latent(cfg(stop_latent_seed=7)), make_stop_latent(cfg(stop_latent_seed=7))
    assert torch.equal(a, b) and abs(float(a.norm()) - 1.0) < 1e-6
    assert not torch.equal(a, make_stop_latent(cfg(stop_latent_seed=8)))
    raw = make_stop_latent(cfg(stop_latent_seed=7, stop_latent_init="random"))
    assert torch.allclose(raw / raw.norm(), a) and abs(float(raw.norm()) - 1.0) > 1e-3


def test_attention_eager_matches_sdpa_with_key_mask():
    torch.manual_seed(0)
    sdpa = Attention(8, 2, 0.0, cfg(attn_implementation="sdpa"), True, True)
    eager = Attention(8, 2, 0.0, cfg(attn_implementation="eager"), True, True)
    eager.load_state_dict(sdpa.state_dict())
    x, ctx = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert torch.allclose(sdpa(x, ctx, mask), eager(x, ctx, mask), atol=1e-5)
    # masked keys do not matter
    ctx2 = ctx.clone()
    ctx2[0, 2] += 10
    assert torch.allclose(sdpa(x, ctx, mask)[0], sdpa(x, ctx2, mask)[0], atol=1e-5)


@pytest.mark.parametrize("knob,module", [("middle_use_rope", "middle"), ("adapter_use_rope", "adapter"),
                                         ("use_prefix_rope", "adapter"), ("use_rmsnorm", "middle"),
                                         ("use_rmsnorm", "adapter")])
def test_switches_change_the_output(knob, module):
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    build = (lambda c: MiddleTransformer(c).eval()) if module == "middle" else (lambda c: PrefixAdapter(c).eval())
    torch.manual_seed(1)
    on = build(cfg(**{knob: True}))
    torch.manual_seed(1)
    off = build(cfg(**{knob: False}))
    off.load_state_dict(on.state_dict(), strict=False)  # LayerNorm has a bias RMSNorm lacks
    assert not torch.allclose(on(z), off(z), atol=1e-4)


def test_adapter_prefix_shape_and_ignores_invalid_latents():
    torch.manual_seed(0)
    ad = PrefixAdapter(cfg(prefix_len=5)).eval()
    z = torch.randn(2, 3, 8)
    valid = torch.tensor([[True, False, False], [True, True, False]])
    out = ad(z, valid)
    assert out.shape == (2, 5, 8)
    z2 = z.clone()
    z2[0, 1:] = 99.0
    assert torch.allclose(ad(z2, valid)[0], out[0], atol=1e-5)


def test_losses_reference_values():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]])
    assert float(losses.latent_mse(pred, target)) == pytest.approx((0.5 + 2.0) / 2)
    assert float(losses.latent_mse(pred, target, torch.tensor([[True, False]]))) == pytest.approx(0.5)
    a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    # perfect pairs: logits diag 1/t, off-diag 0 -> CE = log(1 + e^{-1/t})
    t = 0.5
    assert float(losses.info_nce(a, a, temperature=t)) == pytest.approx(float(torch.log1p(torch.exp(torch.tensor(-1 / t)))), rel=1e-5)
    assert float(losses.info_nce(a[:1], a[:1])) == 0.0
