"""Native interop: converted checkpoints load with the *native* transformers class and match.

Every parity test builds our model from a fixed seed, perturbs the norm weights (so a swapped
or dropped norm would show) and, for sigmoid routers, sets a nonzero selection bias (so the
bias is exercised), saves with :func:`save_native`, loads the directory with
``AutoModelForCausalLM.from_pretrained`` (no ``trust_remote_code``, offline) and compares
logits on padded random batches: max |diff| <= 1e-4 in fp32.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from xoron_pipelines.model import interop
from xoron_pipelines.model.config import get_config
from xoron_pipelines.model.model import XoronForCausalLM

TOL = 1e-4
SEQ = 40  # longer than nano-gqa-moe's sliding window (32) and nano-moe-mla's attention chunk (16)


def _build(preset: str, seed: int = 0, bias: bool = False, **overrides) -> XoronForCausalLM:
    torch.manual_seed(seed)
    model = XoronForCausalLM(get_config(preset, **overrides)).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _name, param in model.named_parameters():
            if param.dim() == 1:  # norm weights start at 1: make them distinguishable
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
        if bias:
            for name, buf in model.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    buf.copy_(0.05 * torch.randn(buf.shape, generator=gen))
    return model


def _batch(vocab: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows: full, right-padded, and a shorter right-padded one."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, SEQ), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, SEQ - 7 :] = 0
    mask[2, SEQ - 19 :] = 0
    return ids, mask


def _max_diff(ours, native, vocab: int) -> float:
    ids, mask = _batch(vocab)
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask).logits
        b = native(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


def _roundtrip(model, tmp_path, expected: str):
    out = interop.save_native(model, tmp_path / "native")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [expected]
    assert "auto_map" not in config  # nothing for trust_remote_code to load
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    native = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(native).__name__ == expected
    return native


CASES = {
    # name: (preset, overrides, sigmoid bias, expected native class)
    "dense_llama": ("nano", {}, False, interop.LLAMA),
    "dense_gqa_yarn_llama": (
        "nano",
        {
            "attention_type": "gqa",
            "num_kv_heads": 2,
            "tie_word_embeddings": False,
            "max_position_embeddings": 64,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        },
        False,
        interop.LLAMA,
    ),
    "dense_sliding_mistral": ("nano", {"sliding_window": 8}, False, interop.MISTRAL),
    "mla_moe_deepseek_v3": ("nano-moe-mla", {}, True, interop.DEEPSEEK_V3),
    "mla_moe_no_shared_full_q_deepseek_v3": (
        "nano-moe-mla",
        {
            "num_shared_experts": 0,
            "q_lora_rank": None,
            "norm_topk_prob": False,
            "routed_scaling_factor": 2.5,
            "first_k_dense_replace": 2,
        },
        True,
        interop.DEEPSEEK_V3,
    ),
    "mla_moe_every_2nd_layer_deepseek_v3": (  # seed 000's layout: dense layers between MoE layers
        "nano-moe-mla",
        {"moe_layer_freq": 2, "first_k_dense_replace": 0},
        True,
        interop.DEEPSEEK_V3,
    ),
    "gqa_moe_softmax_qwen2_moe": ("nano-gqa-moe", {}, False, interop.QWEN2_MOE),
    "gqa_moe_softmax_shared_qwen2_moe": (  # exercises the 0.5-gate / doubled down_proj mapping
        "nano-gqa-moe",
        {"num_shared_experts": 2, "norm_topk_prob": False, "first_k_dense_replace": 1},
        False,
        interop.QWEN2_MOE,
    ),
    "gqa_moe_sigmoid_glm4_moe": (
        "nano-gqa-moe",
        {
            "router_scoring": "sigmoid",
            "moe_layer_freq": 1,
            "first_k_dense_replace": 1,
            "sliding_window": None,
            "num_shared_experts": 1,
            "routed_scaling_factor": 2.5,
            "bias_update_rate": 1e-3,
            "max_position_embeddings": 64,
            "rope_scaling": {
                "type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "mscale": 1.0,
                "mscale_all_dim": 0.0,
            },
        },
        True,
        interop.GLM4_MOE,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_native_logits_match(case, tmp_path):
    preset, overrides, bias, expected = CASES[case]
    model = _build(preset, bias=bias, **overrides)
    assert interop.native_architecture(model.config) == expected
    assert interop.unsupported_features(model.config) == []
    native = _roundtrip(model, tmp_path, expected)
    diff = _max_diff(model, native, model.config.vocab_size)
    assert diff <= TOL, f"{case}: max |logit diff| {diff:.2e}"


def test_selection_bias_is_exercised(tmp_path):
    """The nonzero bias changes our logits, and the native class reproduces the biased ones."""
    model = _build("nano-moe-mla", bias=True)
    unbiased = _build("nano-moe-mla", bias=False)
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = unbiased(input_ids=ids, attention_mask=mask).logits
    assert (a - b).abs().max() > 1e-3
    native = interop.to_native_model(model)
    assert _max_diff(model, native, model.config.vocab_size) <= TOL


def test_peer_is_refused_before_writing(tmp_path):
    model = _build("nano-peer")
    assert interop.native_architecture(model.config) is None
    assert any("PEER" in p for p in interop.unsupported_features(model.config))
    target = tmp_path / "peer_native"
    with pytest.raises(ValueError, match="PEER"):
        interop.save_native(model, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "preset, overrides, target, needle",
    [
        ("nano-learned", {}, None, "position_type"),
        ("nano", {"norm_type": "layernorm"}, interop.LLAMA, "LayerNorm"),
        ("nano", {"sliding_window": 8}, interop.LLAMA, "sliding_window"),
        ("nano-moe-mla", {"router_scoring": "softmax"}, interop.DEEPSEEK_V3, "sigmoid-only"),
        ("nano-moe-mla", {"sliding_window": 8}, interop.DEEPSEEK_V3, "sliding_window"),
        ("nano-gqa-moe", {}, interop.GLM4_MOE, "sigmoid-only"),
        ("nano-gqa-moe", {"routed_scaling_factor": 2.0}, interop.QWEN2_MOE, "routed_scaling_factor"),
    ],
)
def test_unrepresentable_features_are_named(preset, overrides, target, needle, tmp_path):
    model = _build(preset, **overrides)
    problems = interop.unsupported_features(model.config, target)
    assert any(needle.lower() in p.lower() for p in problems), problems
    with pytest.raises(ValueError, match=needle):
        interop.save_native(model, tmp_path / "out", target=target)
    assert not (tmp_path / "out").exists()


def test_qwen2_moe_refuses_learned_selection_bias(tmp_path):
    model = _build("nano-gqa-moe")
    with torch.no_grad():
        next(b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))[0] = 0.1
    with pytest.raises(ValueError, match="e_score_correction_bias"):
        interop.save_native(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_nothing_and_keeps_previous(tmp_path):
    model = _build("nano")
    out = interop.save_native(model, tmp_path / "ckpt")
    before = sorted(p.name for p in out.iterdir())

    class BrokenTokenizer:
        def save_pretrained(self, path):
            (tmp_path / "marker").write_text("started")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        interop.save_native(_build("nano", seed=3), tmp_path / "ckpt", tokenizer=BrokenTokenizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "marker"]  # no temp dir left
    assert sorted(p.name for p in out.iterdir()) == before
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert _max_diff(model, reloaded, model.config.vocab_size) <= TOL  # old checkpoint intact


def test_export_falls_back_to_xoron_format_for_peer(tmp_path):
    model = _build("nano-peer")
    info = interop.export(model, tmp_path / "peer")
    assert info["format"] == "xoron" and any("PEER" in p for p in info["unsupported"])
    config = json.loads((tmp_path / "peer" / "config.json").read_text())
    assert config["model_type"] == "xoron"
    assert "No native Hugging Face transformers class" in (tmp_path / "peer" / "README.md").read_text()
    reloaded = XoronForCausalLM.from_pretrained(tmp_path / "peer").eval()
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "preset, overrides, bias", [("nano", {"tie_word_embeddings": False}, False), ("nano-moe-mla", {}, True)]
)
def test_from_native_roundtrip(preset, overrides, bias, tmp_path):
    model = _build(preset, bias=bias, **overrides)
    out = interop.save_native(model, tmp_path / "native")
    back = interop.from_native(out)
    assert isinstance(back, XoronForCausalLM)
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = back(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (a[keep] - b[keep]).abs().max().item() <= TOL
