"""Attention: chunked == full (padding, window, cache offset), masks vs a naive reference,
MLA parity with transformers' DeepseekV3Attention, absorbed == expanded MLA, cache bytes."""

from __future__ import annotations

import pytest
import torch
from transformers import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

from xoron_pipelines.model import XoronForCausalLM, cache_bytes_per_token, get_config
from xoron_pipelines.model.attention import KVCache, MLAttention, chunked_attention, full_attention
from xoron_pipelines.model.rope import RotaryEmbedding, apply_rotary


def _naive(q, k, v, scale, key_valid, window):
    """Loop reference: query i (cache index off+i) sees keys j <= off+i, within window, not padding."""
    b, h, tq, _ = q.shape
    k = k.repeat_interleave(h // k.shape[1], dim=1)
    v = v.repeat_interleave(h // v.shape[1], dim=1)
    tk, off = k.shape[2], k.shape[2] - q.shape[2]
    out = torch.zeros(b, h, tq, v.shape[-1])
    for bi in range(b):
        for i in range(tq):
            qi = off + i
            keys = [
                j
                for j in range(tk)
                if j <= qi
                and (window is None or qi - j < window)
                and (key_valid is None or key_valid[bi, j] or j == qi)
            ]
            s = (q[bi, :, i, None] @ k[bi][:, keys].transpose(-1, -2))[:, 0] * scale
            out[bi, :, i] = torch.einsum("hn,hnd->hd", s.softmax(-1), v[bi][:, keys])
    return out


def _inputs(tq=13, tk=13, hq=4, hk=2, d=8, dv=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, tq, d, generator=g)
    k = torch.randn(2, hk, tk, d, generator=g)
    v = torch.randn(2, hk, tk, dv, generator=g)
    valid = torch.ones(2, tk, dtype=torch.bool)
    valid[0, :4] = False  # left padding
    valid[1, -3:] = False  # right padding
    return q, k, v, valid


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("tq", [13, 1, 4])  # full sequence, one decode step, a chunk after a cache
def test_full_attention_matches_naive_mask(window, tq):
    q, k, v, valid = _inputs(tq=tq)
    torch.testing.assert_close(full_attention(q, k, v, 0.3, valid, window), _naive(q, k, v, 0.3, valid, window))


@pytest.mark.parametrize("chunk", [1, 3, 5, 16])
@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("tq", [13, 1, 6])
@pytest.mark.parametrize("padded", [True, False])
def test_chunked_equals_full(chunk, window, tq, padded):
    q, k, v, valid = _inputs(tq=tq)
    valid = valid if padded else None
    ref = full_attention(q, k, v, 0.35, valid, window)
    torch.testing.assert_close(chunked_attention(q, k, v, 0.35, chunk, valid, window), ref, rtol=1e-5, atol=1e-5)


def test_chunked_gradients_equal_full():
    q, k, v, valid = _inputs()
    grads = []
    for fn in (lambda *a: full_attention(*a, valid, 4), lambda *a: chunked_attention(*a, 3, valid, 4)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*leaves, 0.35).pow(2).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _ds_config(config):
    rs = config.rope_scaling
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if rs is not None:
        rope = {
            "rope_type": "yarn",
            "rope_theta": config.rope_theta,
            "factor": rs["factor"],
            "original_max_position_embeddings": rs["original_max_position_embeddings"],
            "beta_fast": rs["beta_fast"],
            "beta_slow": rs["beta_slow"],
            "mscale": rs["mscale"],
            "mscale_all_dim": rs["mscale_all_dim"],
        }
    ds = DeepseekV3Config(
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        q_lora_rank=config.q_lora_rank,
        kv_lora_rank=config.kv_lora_rank,
        qk_rope_head_dim=config.qk_rope_head_dim,
        qk_nope_head_dim=config.qk_nope_head_dim,
        v_head_dim=config.v_head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters=rope,
        rope_interleave=False,
        attention_bias=False,
    )
    ds._attn_implementation = "eager"
    return ds


@pytest.mark.parametrize("overrides", [{}, {"rope_scaling": None, "q_lora_rank": None}])
def test_mla_matches_transformers_deepseek_v3(overrides):
    """Same weights, same output as DeepseekV3Attention with rope_interleave=False (our rope convention)."""
    torch.manual_seed(0)
    config = get_config("nano-moe-mla", attention_chunk_size=None, **overrides)
    ours = MLAttention(config, 0).eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ds = _ds_config(config)
    ref = DeepseekV3Attention(ds, 0).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 11, config.hidden_size)
    pos = torch.arange(11)[None].expand(2, -1)
    causal = torch.full((11, 11), float("-inf")).triu(1)[None, None].expand(2, 1, -1, -1)
    expected, _ = ref(x, DeepseekV3RotaryEmbedding(ds)(x, pos), causal)
    got = ours(x, RotaryEmbedding(config)(pos, x.dtype))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mla_absorbed_equals_expanded_and_caches_only_the_latent(monkeypatch):
    torch.manual_seed(0)
    config = get_config("nano-moe-mla", attention_chunk_size=None)
    attn = MLAttention(config, 0).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 9, config.hidden_size)
    cos_sin = RotaryEmbedding(config)(torch.arange(9)[None], x.dtype)
    q_nope, q_pe = attn._queries(x)
    c_kv, k_pe = torch.split(attn.kv_a_proj_with_mqa(x), [32, 16], dim=-1)
    c_kv = attn.kv_a_layernorm(c_kv)
    q_pe = apply_rotary(q_pe, *cos_sin, "torch")
    k_pe = apply_rotary(k_pe[:, None], *cos_sin, "torch")[:, 0]
    torch.testing.assert_close(
        attn._absorbed(q_nope, q_pe, c_kv, k_pe, None),
        attn._expanded(q_nope, q_pe, c_kv, k_pe, None),
        rtol=1e-5,
        atol=1e-5,
    )
    # prefill expands, decoding (non-empty cache) absorbs; the cache holds only latent + rope key
    used = []
    for form in ("_absorbed", "_expanded"):
        original = getattr(attn, form)
        monkeypatch.setattr(attn, form, lambda *a, _f=form, _o=original: used.append(_f) or _o(*a))
    cache = KVCache(1)
    attn(x[:, :8], tuple(t[:, :8] for t in cos_sin), past_key_values=cache)
    attn(x[:, 8:], tuple(t[:, 8:] for t in cos_sin), past_key_values=cache)
    assert used == ["_expanded", "_absorbed"]
    c_kv, k_pe = cache.layers[0]
    assert c_kv.shape == (2, 9, config.kv_lora_rank) and k_pe.shape == (2, 9, config.qk_rope_head_dim)


@pytest.mark.parametrize("name", ["nano", "nano-gqa-moe", "nano-moe-mla"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_bytes_per_token(name, dtype):
    config = get_config(name)
    model = XoronForCausalLM(config).to(dtype).eval()
    with torch.no_grad():
        cache = model(torch.randint(0, 100, (3, 7)), use_cache=True).past_key_values
    assert cache.nbytes() == cache_bytes_per_token(config, dtype) * 3 * 7
    width = dtype.itemsize
    if config.attention_type == "mla":  # latent + rope key only
        assert cache_bytes_per_token(config, dtype) == (32 + 16) * 4 * width
    else:
        assert cache_bytes_per_token(config, dtype) == 2 * config.num_kv_heads * 32 * 4 * width


def test_mla_cache_is_smaller_than_mha_for_seed_000():
    mla = get_config("xoron-dev")
    mha = get_config("xoron-dev", attention_type="mha")
    # 16 heads x 64 dims x (k + v) = 2048 elements vs latent 256 + rope 32 = 288 per layer
    assert cache_bytes_per_token(mha) / cache_bytes_per_token(mla) == pytest.approx(2048 / 288)


@pytest.mark.parametrize("hk", [1, 4])  # MQA (MLA's absorbed latent) and MHA head layouts
def test_chunked_equals_full_head_layouts(hk):
    q, k, v, valid = _inputs(tq=7, hk=hk)
    ref = full_attention(q, k, v, 0.35, valid, None)
    torch.testing.assert_close(chunked_attention(q, k, v, 0.35, 3, valid, None), ref, rtol=1e-5, atol=1e-5)
