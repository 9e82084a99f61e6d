"""Analytic parameter counts (total and active per token) from an XoronConfig, without building it.

``active_per_token`` counts every parameter a token's forward pass multiplies with: everything
except the routed MoE experts it is not sent to (``num_experts - num_experts_per_tok`` per MoE
layer) and the PEER expert rows it does not retrieve (``N - heads * k`` per PEER layer). The
embedding table and lm_head are counted whole, as the DeepSeek-V3 report does.

The formulas mirror the modules (attention.py, mlp.py, moe.py, peer.py, norm.py) and are checked
in tests against ``sum(p.numel())`` of instantiated models (real ones for nano presets, on the
meta device for the large presets, which costs no memory).
"""

from __future__ import annotations

from xoron_pipelines.model.config import XoronConfig


def _norm(config: XoronConfig, dim: int) -> int:
    return 2 * dim if config.norm_type == "layernorm" else dim


def attention_params(config: XoronConfig) -> int:
    """Parameters of one attention block (MHA/GQA: q,k,v,o; MLA: DeepSeek-V3 projections + latent norms)."""
    h, nh = config.hidden_size, config.num_heads
    if config.attention_type != "mla":
        hd, nkv = config.attn_head_dim, config.num_kv_heads
        return 2 * h * nh * hd + 2 * h * nkv * hd
    dn, dr, dv, r, ql = (
        config.qk_nope_head_dim,
        config.qk_rope_head_dim,
        config.v_head_dim,
        config.kv_lora_rank,
        config.q_lora_rank,
    )
    q = h * nh * (dn + dr) if ql is None else h * ql + ql + ql * nh * (dn + dr)
    return q + h * (r + dr) + r + r * nh * (dn + dv) + nh * dv * h


def ffn_params(config: XoronConfig, layer_idx: int) -> tuple[int, int]:
    """(total, active per token) parameters of layer ``layer_idx``'s FFN."""
    h = config.hidden_size
    kind = config.ffn_type(layer_idx)
    if kind == "dense":
        n = 3 * h * config.intermediate_size
        return n, n
    if kind == "moe":
        ie, e, k = config.expert_intermediate_size, config.num_experts, config.num_experts_per_tok
        expert = 3 * h * ie
        fixed = e * h + config.num_shared_experts * expert  # router + shared experts
        return fixed + e * expert, fixed + k * expert
    n, heads, qd = config.peer_num_experts, config.peer_num_heads, config.peer_query_dim
    row = 2 * h * config.peer_expert_hidden_size  # one down + one up embedding row
    n0, n1 = config.peer_product_key_dim
    fixed = h * heads * qd + heads * (n0 + n1) * (qd // 2) + (2 * qd if config.peer_batch_norm_query else 0)
    return fixed + n * row, fixed + min(n, heads * config.peer_num_experts_per_tok) * row


def count_parameters(config: XoronConfig) -> dict[str, int]:
    """Parameter counts by component plus ``total``, ``active_per_token`` and ``non_embedding``."""
    h, v = config.hidden_size, config.vocab_size
    embedding = v * h + (config.max_position_embeddings * h if config.position_type == "learned" else 0)
    lm_head = 0 if config.tie_word_embeddings else v * h
    attention = config.num_layers * attention_params(config)
    norms = (2 * config.num_layers + 1) * _norm(config, h)
    ffn = [ffn_params(config, i) for i in range(config.num_layers)]
    ffn_total, ffn_active = sum(t for t, _ in ffn), sum(a for _, a in ffn)
    total = embedding + lm_head + attention + norms + ffn_total
    return {
        "total": total,
        "active_per_token": total - ffn_total + ffn_active,
        "embedding": embedding,
        "lm_head": lm_head,
        "attention": attention,
        "ffn": ffn_total,
        "norm": norms,
        "non_embedding": total - embedding - lm_head,
    }
