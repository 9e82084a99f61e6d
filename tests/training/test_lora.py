"""LoRA through peft: targets on every attention type, rsLoRA, DoRA init, train_lora_only, LoRA+, merge."""

from __future__ import annotations

import math

import pytest
import torch
from peft.tuners.lora import LoraLayer

from tests.training.finetune_helpers import nano_model
from xoron_pipelines.model import XoronForCausalLM
from xoron_pipelines.training.lora import LoraSettings, apply_lora, lora_plus_param_groups, merge_lora, resolve_targets

MLP = ["gate_proj", "up_proj", "down_proj"]
SEED_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _settings(**kw) -> LoraSettings:
    return LoraSettings(**{"r": 4, "alpha": 8, "dropout": 0.0, **kw})


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        ("nano", {}, ["q_proj", "k_proj", "v_proj", "o_proj", *MLP]),
        ("nano-gqa-moe", {}, ["q_proj", "k_proj", "v_proj", "o_proj", *MLP]),
        ("nano-moe-mla", {}, ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", *MLP]),
        ("nano-moe-mla", {"q_lora_rank": None}, ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", *MLP]),
    ],
)
def test_default_targets_are_the_projections_the_attention_type_has(preset, overrides, expected):
    assert resolve_targets(nano_model(preset, **overrides)) == expected


def test_seed_target_list_on_mla_is_a_clear_error():
    expected = r"\['q_proj', 'k_proj', 'v_proj'\] match no.*kv_a_proj_with_mqa.*kv_b_proj.*q_a_proj"
    with pytest.raises(ValueError, match=expected):
        resolve_targets(nano_model("nano-moe-mla"), SEED_TARGETS)
    assert resolve_targets(nano_model("nano"), SEED_TARGETS) == SEED_TARGETS


def test_lora_on_mla_wraps_the_mla_projections_and_leaves_experts_alone():
    model = apply_lora(nano_model("nano-moe-mla"), _settings())
    for layer in model.base_model.model.model.layers:
        attn = layer.self_attn
        for name in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"):
            assert isinstance(getattr(attn, name), LoraLayer), name
    moe = model.base_model.model.model.layers[1].mlp
    assert isinstance(moe.shared_experts.gate_proj, LoraLayer)
    assert not any("lora" in n for n, _ in moe.experts.named_parameters())  # stacked experts: not nn.Linear
    assert not isinstance(model.base_model.model.lm_head, LoraLayer)


@pytest.mark.parametrize(("rslora", "expected"), [(True, 8 / math.sqrt(4)), (False, 8 / 4)])
def test_rslora_scaling(rslora, expected):
    model = apply_lora(nano_model(), _settings(use_rslora=rslora))
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling == {"default": pytest.approx(expected)}


def test_dora_magnitude_starts_at_the_weight_row_norms_not_ones():
    base = nano_model("nano-moe-mla")
    weight = base.model.layers[0].self_attn.kv_b_proj.weight.detach().clone()
    model = apply_lora(base, _settings(use_dora=True))
    layer = model.base_model.model.model.layers[0].self_attn.kv_b_proj
    magnitude = layer.lora_magnitude_vector["default"].weight.detach()
    assert magnitude.shape == (weight.shape[0],)
    assert torch.allclose(magnitude, weight.norm(dim=1), rtol=1e-5)
    assert not torch.allclose(magnitude, torch.ones_like(magnitude), atol=0.1)
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad(), model.disable_adapter():
        plain = model(input_ids=x).logits
    with torch.no_grad():
        adapted = model(input_ids=x).logits
    assert torch.allclose(adapted, plain, atol=1e-5)  # with B = 0 and m = ||W||, DoRA starts as the base model


@pytest.mark.parametrize("lora_only", [True, False])
def test_train_lora_only_freezes_everything_else(lora_only):
    base = nano_model()
    base.model.embed_tokens.weight.requires_grad_(False)  # frozen by the user before LoRA
    model = apply_lora(base, _settings(train_lora_only=lora_only))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert lora and lora <= trainable
    if lora_only:
        assert trainable == lora
    else:  # base weights train too, except the one frozen before
        everything = {n for n, _ in model.named_parameters()}
        assert trainable == everything - {"base_model.model.model.embed_tokens.weight"}
        assert any(n.endswith("q_proj.base_layer.weight") for n in trainable)


def test_lora_plus_groups_give_b_ratio_times_lr():
    model = apply_lora(nano_model(), _settings(use_dora=True))
    groups = lora_plus_param_groups(model, lr=1e-3, ratio=4.0, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each exactly once
    for group in groups:
        for p in group["params"]:
            is_b = ".lora_B." in names[id(p)]
            assert group["lr"] == pytest.approx(4e-3 if is_b else 1e-3), names[id(p)]
            assert group["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0)
    base = [g for g in groups if any("lora_" not in names[id(p)] for p in g["params"])]
    assert base and all(g["lr"] == pytest.approx(1e-3) for g in base)  # base weights train at lr
    optim = torch.optim.AdamW(groups, lr=1e-3)
    assert sorted({g["lr"] for g in optim.param_groups}) == pytest.approx([1e-3, 4e-3])


def test_settings_accept_seed_names_and_reject_nonsense():
    s = LoraSettings.model_validate(
        {
            "use_lora": True,
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.1,
            "lora_target_modules": ["q_proj"],
            "use_lora_plus": False,
        }
    )
    assert (s.r, s.alpha, s.dropout, s.target_modules, s.b_lr_ratio) == (8, 16, 0.1, ["q_proj"], 1.0)
    assert LoraSettings().b_lr_ratio == 4.0 and LoraSettings().use_rslora and not LoraSettings().use_dora
    for bad in ({"r": 0}, {"dropout": 1.0}, {"lora_plus_lr_ratio": 0}, {"rank": 4}, {"target_modules": []}):
        with pytest.raises(ValueError):
            LoraSettings.model_validate(bad)
    plain = nano_model()
    assert apply_lora(plain, LoraSettings(enabled=False)) is plain and merge_lora(plain) is plain


@pytest.mark.parametrize("dora", [False, True])
def test_merge_equals_adapted_model_and_saves_as_plain_xoron(tmp_path, dora):
    model = apply_lora(nano_model("nano-moe-mla"), _settings(use_dora=dora, train_lora_only=True))
    opt = torch.optim.AdamW(lora_plus_param_groups(model, 1e-2, 4.0, 0.0))
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
    kv_b = model.base_model.model.model.layers[0].self_attn.kv_b_proj
    assert kv_b.lora_B["default"].weight.abs().max() > 0
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=x).logits
        with model.disable_adapter():
            base = model(input_ids=x).logits
    merged = merge_lora(model)
    assert type(merged) is XoronForCausalLM
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert all(p.requires_grad for p in merged.parameters())
    with torch.no_grad():
        out = merged(input_ids=x).logits
    assert torch.allclose(out, adapted, atol=1e-5)
    assert not torch.allclose(out, base, atol=1e-3)  # the adapters did change the model
    merged.save_pretrained(tmp_path)
    reloaded = XoronForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, out, atol=1e-6)
