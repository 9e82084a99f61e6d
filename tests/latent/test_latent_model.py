"""Latent modules on their own (no encoder / decoder load): shapes, normalisation, stop latent,
attention backends, RoPE / norm switches and parameter validation."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines.latent import losses
from xoron_pipelines.latent.model import (
    Attention,
    Compression,
    LatentConfig,
    MiddleTransformer,
    PrefixAdapter,
    make_stop_latent,
)

BASE = LatentConfig(
    encoder_model="x",
    encoder_hidden=12,
    decoder_hidden=8,
    latent_dim=8,
    latent_seq_len=3,
    prefix_len=5,
    middle_hidden_dim=10,
    middle_layers=3,
    middle_transformer_layers=2,
    middle_num_heads=2,
    adapter_num_heads=2,
    middle_dropout=0.0,
    adapter_dropout=0.0,
)


def cfg(**kw) -> LatentConfig:
    return BASE.model_copy(update=kw)


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


@pytest.mark.parametrize(
    "knob,module",
    [
        ("middle_use_rope", "middle"),
        ("adapter_use_rope", "adapter"),
        ("use_prefix_rope", "adapter"),
        ("use_rmsnorm", "middle"),
        ("use_rmsnorm", "adapter"),
    ],
)
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
    assert float(losses.info_nce(a, a, temperature=t)) == pytest.approx(
        float(torch.log1p(torch.exp(torch.tensor(-1 / t)))), rel=1e-5
    )
    assert float(losses.info_nce(a[:1], a[:1])) == 0.0


def test_gradient_checkpointing_keeps_outputs_and_grads():
    torch.manual_seed(0)
    plain = MiddleTransformer(cfg()).train()
    ckpt = MiddleTransformer(cfg()).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.gradient_checkpointing = True
    z = torch.randn(2, 3, 8)
    a, b = plain(z), ckpt(z)
    a.sum().backward()
    b.sum().backward()
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(plain.blocks[0].attn.q.weight.grad, ckpt.blocks[0].attn.q.weight.grad, atol=1e-6)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"prefetch_factor": 4}, "prefetch_factor"),
        ({"attn_implementation": "flash_attention_2"}, "flash_attn"),
        ({"latent_dim": 10, "middle_num_heads": 4}, "divisible"),
        ({"pretrain_best_model_filename": "best_model.safetensors"}, "must differ"),
        ({"pretrain_best_model_filename": "x.pt"}, "safetensors"),
        ({"training_phase": "phase4"}, "training_phase"),
    ],
)
def test_impossible_params_fail(override, message):
    from pydantic import ValidationError

    from xoron_pipelines.pipelines.latent.params import Params, flash_attention_available

    if "attn_implementation" in override and flash_attention_available():
        pytest.skip("flash_attn is installed on a GPU machine: the setting is valid there")
    with pytest.raises(ValidationError, match=message):
        Params.model_validate(override)


def test_device_knob():
    from xoron_pipelines.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_structure_follows_the_dimension_knobs():
    c = cfg(
        middle_transformer_layers=3,
        middle_ffn_multiplier=2.5,
        middle_num_heads=4,
        prefix_len=7,
        adapter_num_heads=4,
        rmsnorm_eps=1e-3,
    )
    mid, ad = MiddleTransformer(c), PrefixAdapter(c)
    assert len(mid.blocks) == 3 and mid.blocks[0].ffn.net[0].out_features == 20  # 8 x 2.5
    assert mid.blocks[0].attn.heads == 4 and ad.cross.attn.heads == 4 and ad.queries.shape == (7, 8)
    assert mid.norm.eps == 1e-3 and isinstance(mid.norm, torch.nn.RMSNorm)
    assert isinstance(MiddleTransformer(cfg(use_rmsnorm=False)).norm, torch.nn.LayerNorm)


@pytest.mark.parametrize("knob,a,b", [("rope_base", 10000.0, 10.0), ("middle_dropout", 0.0, 0.5)])
def test_rope_base_and_dropout_take_effect(knob, a, b):
    z = torch.randn(2, 3, 8)
    outs = []
    for value in (a, b):
        torch.manual_seed(0)
        mid = MiddleTransformer(cfg(**{knob: value})).train()
        torch.manual_seed(1)
        outs.append(mid(z))
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)


@pytest.mark.parametrize("threshold,kept", [(0.99, 2), (0.999, 3)])
def test_stop_latent_cosine_threshold_cuts_generation(threshold, kept):
    from types import SimpleNamespace

    from xoron_pipelines.latent.model import LatentModel

    c = cfg(stop_latent_cosine_threshold=threshold)
    stop = make_stop_latent(c)
    other = torch.nn.functional.normalize(torch.randn(8), dim=0)
    other = other - (other @ stop) * stop  # orthogonal to the stop latent
    near = torch.nn.functional.normalize(stop + 0.09 * other / other.norm(), dim=0)  # cos ~ 0.996
    z = torch.stack([other, other, near])[None]
    m = SimpleNamespace(cfg=c, stop_latent=stop)
    assert LatentModel.valid_until_stop(m, z).sum().item() == kept
    m.cfg = cfg(use_stop_latent=False)
    assert LatentModel.valid_until_stop(m, z).sum().item() == 3


def test_seed_spellings_are_accepted():
    from xoron_pipelines.pipelines.latent.params import Params

    p = Params.model_validate({"modernbert_model": "/models/enc", "use_tui": False})
    assert p.encoder_model == "/models/enc" and p.progress is False
