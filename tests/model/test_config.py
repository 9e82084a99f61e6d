"""XoronConfig: seed-000 defaults, aliases, validation errors naming the field, conf/ schema."""

from __future__ import annotations

import pytest
import yaml
from transformers import AutoConfig

import xoron_pipelines.model  # noqa: F401  (registers model_type "xoron")
from xoron_pipelines.model.config import XoronConfig, get_config
from xoron_pipelines.validation import ParameterError, validate_group


def test_defaults_are_seed_000_llm():
    c = XoronConfig()
    assert (c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size) == (1024, 12, 16, 2048)
    assert c.vocab_size == 151643 and c.max_position_embeddings == 131072
    assert c.attention_chunk_size == 4096  # use_ring_attention / ring_attention_chunk_size
    assert (c.use_moe, c.num_experts, c.num_experts_per_tok, c.moe_layer_freq) == (True, 8, 2, 2)
    assert c.num_shared_experts == 1 and c.aux_loss_coef == 0 and c.bias_update_rate > 0  # aux-loss-free
    assert c.attention_type == "mla"
    rs = c.rope_scaling
    assert rs["type"] == "yarn" and rs["factor"] * rs["original_max_position_embeddings"] == 131072


def test_seed_aliases():
    c = XoronConfig(
        d_model=256,
        n_layers=3,
        n_heads=4,
        d_ff=512,
        max_seq_len=128,
        use_rmsnorm=False,
        use_rope=False,
        use_moe=False,
        attention_type="mha",
        rope_scaling=None,
    )
    assert (c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size) == (256, 3, 4, 512)
    assert c.max_position_embeddings == 128 and c.norm_type == "layernorm" and c.position_type == "learned"
    # transformers names read and write our fields
    assert c.num_hidden_layers == 3 and c.num_attention_heads == 4 and c.num_key_value_heads == 4
    c2 = XoronConfig(num_hidden_layers=5, use_ring_attention=False, use_shared_expert=False, use_aux_lossless=False)
    assert c2.num_layers == 5 and c2.attention_chunk_size is None and c2.num_shared_experts == 0
    assert c2.bias_update_rate == 0 and c2.aux_loss_coef > 0
    # seed 002 nested blocks
    c3 = XoronConfig(
        hidden_size=768,
        num_attention_heads=12,
        use_moe=False,
        use_peer=True,
        peer_config={
            "num_experts": 4096,
            "product_key_dim": [64, 64],
            "num_experts_per_tok": 8,
            "num_heads": 4,
            "query_dim": 64,
            "log_freq": 10,
        },
        mla_config={
            "q_lora_rank": 96,
            "kv_lora_rank": 64,
            "qk_rope_head_dim": 16,
            "v_head_dim": 32,
            "qk_nope_head_dim": 32,
            "rope_theta": 5e5,
        },
    )
    assert (c3.peer_num_experts, c3.peer_product_key_dim, c3.peer_num_heads) == (4096, [64, 64], 4)
    assert (c3.q_lora_rank, c3.kv_lora_rank, c3.rope_theta, c3.attention_type) == (96, 64, 5e5, "mla")


def test_ffn_type_rule():
    c = XoronConfig()  # MoE every 2nd layer from layer 0
    assert [c.ffn_type(i) for i in range(4)] == ["moe", "dense", "moe", "dense"]
    c = get_config("nano-moe-mla")  # freq 1, first dense layer
    assert [c.ffn_type(i) for i in range(4)] == ["dense", "moe", "moe", "moe"]
    c = get_config("nano-peer")
    assert [c.ffn_type(i) for i in range(4)] == ["dense", "dense", "peer", "peer"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"hidden_size": 1000, "num_heads": 12, "attention_type": "mha"},
            "XoronConfig.num_heads=12 does not divide hidden_size=1000",
        ),
        (
            {"attention_type": "gqa", "num_heads": 8, "num_kv_heads": 3, "hidden_size": 256},
            "num_kv_heads=3 does not divide num_heads=8",
        ),
        ({"kv_lora_rank": 1024}, "kv_lora_rank=1024 must be smaller than hidden_size=1024"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok=9 exceeds num_experts=8"),
        (
            {"use_peer": True, "peer_num_experts": 1000, "peer_product_key_dim": [32, 32]},
            "peer_product_key_dim=[32, 32] multiplies to 1024, not peer_num_experts=1000",
        ),
        (
            {
                "use_peer": True,
                "peer_num_experts": 1024,
                "peer_product_key_dim": [32, 32],
                "peer_num_experts_per_tok": 33,
            },
            "peer_num_experts_per_tok=33",
        ),
        ({"attention_chunk_size": 0}, "attention_chunk_size=0 must be a positive integer"),
        ({"attention_chunk_size": -4}, "attention_chunk_size=-4"),
        ({"sliding_window": 0}, "sliding_window=0"),
        ({"attention_type": "linear"}, "attention_type='linear' must be one of"),
        ({"kernels": "cuda"}, "kernels='cuda' must be one of"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling.original_max_position_embeddings"),
        ({"rope_scaling": {"type": "ntk", "factor": 4.0}}, "rope_scaling.type='ntk'"),
        (
            {
                "rope_scaling": {
                    "type": "yarn",
                    "factor": 4.0,
                    "original_max_position_embeddings": 64,
                    "beta_fast": 1.0,
                    "beta_slow": 32.0,
                }
            },
            "rope_scaling.beta_fast=1.0",
        ),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"qk_rope_head_dim": 7}, "qk_rope_head_dim=7 must be even"),
        ({"use_peer": True, "peer_start_layer": 12}, "peer_start_layer=12"),
    ],
)
def test_bad_config_names_the_field(overrides, message):
    with pytest.raises(ValueError) as err:
        XoronConfig(**overrides)
    assert message in str(err.value)


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match=r"unknown model preset 'huge'.*nano.*xoron-dev"):
        get_config("huge")


def test_save_load_roundtrip_and_autoconfig(tmp_path):
    c = get_config("nano-moe-mla", eos_token_id=2)
    c.save_pretrained(tmp_path)
    back = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(back, XoronConfig)
    for key in (
        "hidden_size",
        "num_layers",
        "attention_type",
        "kv_lora_rank",
        "rope_scaling",
        "num_experts",
        "first_k_dense_replace",
        "attention_chunk_size",
        "eos_token_id",
    ):
        assert getattr(back, key) == getattr(c, key), key


def test_conf_file_validates(project_root):
    raw = yaml.safe_load((project_root / "conf/base/parameters_model.yml").read_text())
    params = validate_group("model", raw["model"])
    assert params.build().hidden_size == get_config(raw["model"]["preset"]).hidden_size


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"preset": "nano", "overrides": {"num_heads": 5}}, "model.overrides.num_heads"),
        ({"preset": "nano", "overrides": {"hidden_sise": 64}}, "model.overrides.hidden_sise"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"preset": "nano", "extra": 1}, "model.extra"),
    ],
)
def test_model_params_errors(values, message):
    with pytest.raises(ParameterError) as err:
        validate_group("model", values)
    assert message in str(err.value) and "conf/base/parameters_model.yml" in str(err.value)


def test_model_params_overrides_take_effect():
    cfg = validate_group("model", {"preset": "nano", "overrides": {"num_layers": 2, "n_heads": 8}}).build()
    assert cfg.num_layers == 2 and cfg.num_heads == 8 and cfg.hidden_size == 128
