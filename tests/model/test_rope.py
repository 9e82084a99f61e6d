"""RoPE: parity with transformers (plain, linear, YaRN incl. DeepSeek mscale) and YaRN's ramp direction."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DeepseekV3Config, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from xoron_pipelines.model import get_config
from xoron_pipelines.model.rope import RotaryEmbedding, get_mscale, rope_inv_freq, softmax_scale

YARN = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 256, "beta_fast": 32.0, "beta_slow": 1.0}


def _dense(**kw):
    return get_config("nano", hidden_size=256, num_heads=2, max_position_embeddings=2048, rope_theta=10000.0, **kw)


def _llama(rope_parameters):
    return LlamaConfig(
        hidden_size=256,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=128,
        max_position_embeddings=2048,
        rope_parameters=rope_parameters,
    )


def test_yarn_matches_transformers():
    ours, attn = rope_inv_freq(_dense(rope_scaling=YARN))
    hf_rope = {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "original_max_position_embeddings": 256,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    }
    ref, ref_attn = ROPE_INIT_FUNCTIONS["yarn"](_llama(hf_rope))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert attn == pytest.approx(ref_attn) == pytest.approx(0.1 * math.log(8.0) + 1)


def test_linear_matches_transformers():
    ours, attn = rope_inv_freq(_dense(rope_scaling={"type": "linear", "factor": 4.0}))
    ref, _ = ROPE_INIT_FUNCTIONS["linear"](_llama({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert attn == 1.0


def test_yarn_ramp_direction_follows_the_paper():
    """YaRN (Peng et al. 2023, eq. 18-20): r = L / lambda rotations over the original context;
    r > beta (high frequency) -> frequency kept, r < alpha (low frequency) -> divided by the factor."""
    config = _dense(rope_scaling=YARN)
    dim, base, factor, orig = 128, 10000.0, 8.0, 256
    plain = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    scaled, _ = rope_inv_freq(config)
    ratio = scaled / plain
    rotations = orig * plain / (2 * math.pi)  # r(d) = L / wavelength
    high, low = rotations > YARN["beta_fast"], rotations < YARN["beta_slow"]
    assert high.any() and low.any()
    torch.testing.assert_close(ratio[high], torch.ones(int(high.sum())))
    torch.testing.assert_close(ratio[low], torch.full((int(low.sum()),), 1 / factor))
    assert ratio[0] == pytest.approx(1.0) and ratio[-1] == pytest.approx(1 / factor)
    assert bool((ratio[1:] <= ratio[:-1] + 1e-7).all())  # monotone ramp from keep to interpolate


def test_rotary_embedding_cos_sin_match_llama():
    config = _dense(rope_scaling=YARN)
    hf = LlamaRotaryEmbedding(
        _llama({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 256})
    )
    pos = torch.tensor([[0, 1, 5, 300, 2047]])
    cos, sin = RotaryEmbedding(config)(pos, torch.float32)
    ref_cos, ref_sin = hf(torch.zeros(1, 5, 128), pos)
    torch.testing.assert_close(cos, ref_cos)
    torch.testing.assert_close(sin, ref_sin)


def test_deepseek_mscale_parity():
    """MLA with mscale/mscale_all_dim: cos/sin factor and softmax scale as transformers' DeepSeek-V3."""
    rs = {**YARN, "mscale": 0.707, "mscale_all_dim": 1.0}
    config = get_config("nano-moe-mla", rope_scaling=rs, max_position_embeddings=2048)
    ds = DeepseekV3Config(
        hidden_size=128,
        num_attention_heads=4,
        qk_rope_head_dim=16,
        qk_nope_head_dim=16,
        v_head_dim=32,
        kv_lora_rank=32,
        q_lora_rank=64,
        max_position_embeddings=2048,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "original_max_position_embeddings": 256,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
        },
    )
    ref, ref_attn = ROPE_INIT_FUNCTIONS["yarn"](ds)
    ours, attn = rope_inv_freq(config)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert attn == pytest.approx(ref_attn) == pytest.approx(get_mscale(8, 0.707) / get_mscale(8, 1.0))
    assert softmax_scale(config, 32) == pytest.approx(32**-0.5 * get_mscale(8.0, 1.0) ** 2)
    assert softmax_scale(get_config("nano-moe-mla", rope_scaling=None), 32) == pytest.approx(32**-0.5)
