"""XoronForCausalLM: loss semantics, chunked/windowed attention in the model, checkpointing,
dropout, kernels dispatch, trainer pass-throughs, safetensors save/load via Auto classes."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from xoron_pipelines.model import XoronForCausalLM, get_config


def _model(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return XoronForCausalLM(get_config(name, **overrides))


def _ids(batch=2, length=12, vocab=8000, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_loss_is_weighted_shifted_cross_entropy():
    model = _model("nano").eval()
    ids = _ids()
    labels = ids.clone()
    labels[0, 5] = -100
    weights = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2))
    out = model(ids, labels=labels, loss_weights=weights)
    ce = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, 8000), labels[:, 1:].reshape(-1), reduction="none", ignore_index=-100
    )
    w = weights[:, 1:].reshape(-1) * (labels[:, 1:].reshape(-1) != -100)
    torch.testing.assert_close(out.loss, (w * ce).sum() / w.sum(), rtol=1e-5, atol=1e-6)
    plain = model(ids, labels=labels)
    torch.testing.assert_close(plain.loss, ce.sum() / (labels[:, 1:] != -100).sum(), rtol=1e-5, atol=1e-6)
    lean = model(ids, labels=labels, loss_weights=weights, return_logits=False)
    assert lean.logits is None
    torch.testing.assert_close(lean.loss, out.loss)


def test_moe_aux_loss_is_added():
    model = _model("nano-gqa-moe").train()  # aux_loss_coef 0.01
    ids = _ids()
    out = model(ids, labels=ids)
    ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, 8000), ids[:, 1:].reshape(-1))
    assert out.aux_loss > 0
    torch.testing.assert_close(out.loss, ce + out.aux_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["nano-gqa-moe", "nano-moe-mla"])
def test_chunked_model_equals_full_model_with_padding(name):
    chunked = _model(name).eval()
    full = XoronForCausalLM(get_config(name, attention_chunk_size=None)).eval()
    full.load_state_dict(chunked.state_dict())
    ids = _ids(length=40)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding
    mask[1, -5:] = 0  # right padding
    with torch.no_grad():
        a, b = chunked(ids, attention_mask=mask).logits, full(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(a[keep], b[keep], rtol=1e-4, atol=1e-5)


def test_padding_is_ignored():
    model = _model("nano").eval()
    ids = _ids(batch=1, length=10)
    padded = torch.cat([torch.full((1, 4), 7), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded, attention_mask=mask).logits[:, 4:], model(ids).logits, rtol=1e-5, atol=1e-5
        )


def test_sliding_window_limits_context():
    windowed = _model("nano", sliding_window=4, num_layers=1).eval()
    unlimited = _model("nano", num_layers=1).eval()
    ids = _ids(batch=1, length=12)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 8000
    with torch.no_grad():
        # with one layer, position 11 sees positions 8..11 only: token 0 cannot matter
        torch.testing.assert_close(windowed(ids).logits[:, 11], windowed(changed).logits[:, 11])
        assert not torch.allclose(unlimited(ids).logits[:, 11], unlimited(changed).logits[:, 11])


def test_learned_positions_take_effect_and_are_bounded():
    model = _model("nano-learned").eval()
    assert model.model.embed_positions.weight.shape == (256, 128) and model.model.rotary_emb is None
    ids = _ids(batch=1, length=6)
    with torch.no_grad():
        base = model(ids).logits
        shifted = model(ids, position_ids=torch.arange(10, 16)[None]).logits
    assert not torch.allclose(base, shifted)
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        model(_ids(batch=1, length=257))


def test_gradient_checkpointing_same_gradients():
    grads = []
    for checkpoint in (False, True):
        model = _model("nano-moe-mla").train()
        if checkpoint:
            model.gradient_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        ids = _ids()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_dropout_only_in_training():
    model = _model("nano-learned")  # dropout 0.1
    ids = _ids()
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)
    model.eval()
    torch.testing.assert_close(model(ids).logits, model(ids).logits)


def test_kernels_knob_dispatch_matches_torch(monkeypatch):
    calls = []
    import xoron_pipelines.kernels as kernels

    for fn in ("rms_norm", "apply_rope", "swiglu", "fused_linear_cross_entropy"):
        original = getattr(kernels, fn)

        def spy(*args, _orig=original, _fn=fn, **kwargs):
            calls.append((_fn, kwargs.get("impl")))
            return _orig(*args, **kwargs)

        monkeypatch.setattr(kernels, fn, spy)
    ids = _ids(batch=1, length=8)
    ref = _model("nano", kernels="torch")
    out_torch = ref(ids, labels=ids)
    assert {name for name, _ in calls} == {"rms_norm", "apply_rope", "swiglu", "fused_linear_cross_entropy"}
    assert {impl for _, impl in calls} == {"torch"}
    calls.clear()
    tri = _model("nano", kernels="triton")  # Triton interpreter on CPU (TRITON_INTERPRET=1 in conftest)
    out_tri = tri(ids, labels=ids)
    assert {impl for _, impl in calls} == {"triton"}
    torch.testing.assert_close(out_tri.logits, out_torch.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_tri.loss, out_torch.loss, rtol=1e-4, atol=1e-4)


def test_trainer_passthroughs():
    model = _model("nano-moe-mla").train()
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    load = model.expert_load()
    assert sorted(load) == [1, 2, 3]
    for frac in load.values():
        assert frac.shape == (4,) and float(frac.sum()) == pytest.approx(1.0)
    before = model.model.layers[1].mlp.gate.e_score_correction_bias.clone()
    model.update_moe_bias()
    assert not torch.equal(before, model.model.layers[1].mlp.gate.e_score_correction_bias)
    peer = _model("nano-peer")
    assert sorted(peer.peer_hot_experts()) == [2, 3]


@pytest.mark.parametrize("name", ["nano", "nano-moe-mla", "nano-peer"])
def test_save_load_safetensors_via_auto(tmp_path, name, caplog):
    model = _model(name).eval()
    with caplog.at_level(logging.WARNING):
        model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "model.safetensors"]
    assert ("no native transformers class" in caplog.text) == (name == "nano-peer")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, XoronForCausalLM)
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == model.config.tie_word_embeddings
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_pickle_is_refused(tmp_path):
    model = _model("nano")
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path, safe_serialization=False)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="safetensors only"):
        XoronForCausalLM.from_pretrained(tmp_path, use_safetensors=False)


def test_structural_knobs_take_effect():
    layer = lambda m: m.model.layers[0]  # noqa: E731
    wide = _model("nano", initializer_range=0.1)
    narrow = _model("nano", initializer_range=0.01)
    assert float(layer(wide).self_attn.q_proj.weight.detach().std()) == pytest.approx(0.1, rel=0.05)
    assert float(layer(narrow).mlp.up_proj.weight.detach().std()) == pytest.approx(0.01, rel=0.05)
    ln = _model("nano", norm_type="layernorm", norm_eps=1e-3)
    assert isinstance(ln.model.norm, torch.nn.LayerNorm) and ln.model.norm.eps == 1e-3
    rms = _model("nano", norm_eps=1e-4)
    assert type(rms.model.norm).__name__ == "RMSNorm" and rms.model.norm.eps == 1e-4
    theta = _model("nano", rope_theta=500000.0).model.rotary_emb.inv_freq
    assert float(theta[1]) == pytest.approx(500000.0 ** (-2 / 32))
    gqa = _model("nano", attention_type="gqa", num_kv_heads=2, head_dim=16)
    assert layer(gqa).self_attn.k_proj.weight.shape == (2 * 16, 128)
    assert layer(gqa).self_attn.q_proj.weight.shape == (4 * 16, 128)
    untied = _model("nano", tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    full_q = _model("nano-moe-mla", q_lora_rank=None)
    assert hasattr(layer(full_q).self_attn, "q_proj") and not hasattr(layer(full_q).self_attn, "q_a_proj")
    drop = _model("nano", attention_dropout=0.5).train()
    ids = _ids(batch=1, length=6)
    assert not torch.allclose(drop(ids).logits, drop(ids).logits)
