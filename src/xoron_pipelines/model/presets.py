"""Named model presets: the seeds' documented sizes plus CPU-sized ``nano`` variants.

Plain data (XoronConfig fields per preset name, no imports from the model library);
:func:`xoron_pipelines.model.config.get_config` builds a config from them.

Seed 001 (llm-from-scratch) size table, with the parameter counts our
:func:`~xoron_pipelines.model.params_count.count_parameters` gives for it (SwiGLU FFN of width
``d_ff``, tied embeddings, RoPE, no biases) next to the plain GPT-style FFN (two matrices) count::

    size    d_model layers heads d_ff  seq  vocab  doc    SwiGLU+tied  GPT-FFN+tied
    tiny      256     4     4  1024   512  32000  ~10M      12.4M         11.3M
    medium    768    12    12  3072  1024  32000  ~150M    137.8M        109.5M
    large    1600    32    25  6400  4096  32000  ~1.6B      1.36B         1.04B
    xlarge   2048    40    32  8192  8192  32000  ~7B       2.75B         2.08B

The document's figures for tiny/medium are consistent with its dimensions (within 25%); "~1.6B"
for large is 15% above the most generous reading; "~7B" for xlarge is wrong by a factor of
about 2.5 (7B needs e.g. d_model 4096 with 32 layers). We keep the documented dimensions.

Seed 000 (Xoron-Dev) ``xoron-dev`` is XoronConfig's defaults. The seed gives no MLA dimensions
for the LLM; ours are kv_lora_rank 256, q_lora_rank 512, rope/nope/v head dims 32/64/64, YaRN
factor 32 over an original 4K context (4096 * 32 = 131072 = the documented 128K).

Seed 002 (llm720) ``peer-mla``: 768/12/12/3072, vocab 50272, 2048 positions, LayerNorm eps 1e-5,
PEER from layer 2 (1024 x 1024 = 1,048,576 experts, 16 per token, 8 heads, query_dim 256,
batch_norm_query) and MLA (q_lora 1536, kv_lora 512, rope 64, nope 128, v 128).
"""

from __future__ import annotations

from typing import Any

# Plain decoder: overrides the seed-000 defaults (MLA + MoE + YaRN + chunking) back to Llama-like.
_DENSE: dict[str, Any] = {
    "attention_type": "mha",
    "use_moe": False,
    "rope_scaling": None,
    "attention_chunk_size": None,
    "tie_word_embeddings": True,
}


def _seed001(d_model: int, n_layers: int, n_heads: int, d_ff: int, max_seq_len: int) -> dict[str, Any]:
    return {
        **_DENSE,
        "hidden_size": d_model,
        "num_layers": n_layers,
        "num_heads": n_heads,
        "intermediate_size": d_ff,
        "max_position_embeddings": max_seq_len,
        "vocab_size": 32000,
        "dropout": 0.0,
        "norm_type": "rmsnorm",
        "position_type": "rope",
    }


_NANO: dict[str, Any] = {
    **_DENSE,
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "intermediate_size": 256,
    "vocab_size": 8000,
    "max_position_embeddings": 256,
}

PRESETS: dict[str, dict[str, Any]] = {
    # seed 001
    "tiny": _seed001(256, 4, 4, 1024, 512),
    "medium": _seed001(768, 12, 12, 3072, 1024),
    "large": _seed001(1600, 32, 25, 6400, 4096),
    "xlarge": _seed001(2048, 40, 32, 8192, 8192),
    # seed 000: the defaults of XoronConfig
    "xoron-dev": {},
    # seed 002
    "peer-mla": {
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "intermediate_size": 3072,
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
        "initializer_range": 0.02,
        "norm_type": "layernorm",
        "norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_chunk_size": None,
        "use_moe": False,
        "use_peer": True,
        "peer_start_layer": 2,
        "peer_num_experts": 1048576,
        "peer_num_experts_per_tok": 16,
        "peer_num_heads": 8,
        "peer_expert_hidden_size": 1,
        "peer_product_key_dim": [1024, 1024],
        "peer_query_dim": 256,
        "peer_batch_norm_query": True,
        "peer_usage_threshold": 5.0,
        "attention_type": "mla",
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "qk_nope_head_dim": 128,
    },
    # CPU-sized, one per architecture path
    "nano": _NANO,
    "nano-learned": {**_NANO, "norm_type": "layernorm", "norm_eps": 1e-5, "position_type": "learned", "dropout": 0.1},
    "nano-moe-mla": {
        **_NANO,
        "tie_word_embeddings": False,
        "attention_type": "mla",
        "q_lora_rank": 64,
        "kv_lora_rank": 32,
        "qk_rope_head_dim": 16,
        "qk_nope_head_dim": 16,
        "v_head_dim": 32,
        "attention_chunk_size": 16,
        "rope_scaling": {
            "type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        "use_moe": True,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_layer_freq": 1,
        "first_k_dense_replace": 1,
        "num_shared_experts": 1,
        "moe_intermediate_size": 64,
        "router_scoring": "sigmoid",
        "bias_update_rate": 1e-3,
        "aux_loss_coef": 0.0,
    },
    "nano-gqa-moe": {
        **_NANO,
        "attention_type": "gqa",
        "num_kv_heads": 2,
        "sliding_window": 32,
        "attention_chunk_size": 32,
        "rope_scaling": {"type": "linear", "factor": 2.0},
        "use_moe": True,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_layer_freq": 2,
        "first_k_dense_replace": 0,
        "num_shared_experts": 0,
        "moe_intermediate_size": 64,
        "router_scoring": "softmax",
        "bias_update_rate": 0.0,
        "aux_loss_coef": 0.01,
    },
    "nano-peer": {
        **_NANO,
        "use_peer": True,
        "peer_start_layer": 2,
        "peer_num_experts": 1024,
        "peer_product_key_dim": [32, 32],
        "peer_num_experts_per_tok": 4,
        "peer_num_heads": 2,
        "peer_query_dim": 32,
        "peer_expert_hidden_size": 1,
        "peer_batch_norm_query": True,
    },
}
