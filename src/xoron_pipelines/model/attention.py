"""Self-attention: MHA/GQA (Llama math) and MLA (DeepSeek-V2/V3 math), full or chunked, with KV caches.

Masking is the same for every backend: a query at cache index ``q`` may attend key ``k`` when
``k <= q`` (causal), ``q - k < sliding_window`` (when set) and key ``k`` is not padding. A query
whose every key is masked (a padding query with only padding before it) attends to itself, so no
row is empty and no NaN appears; such rows are padding and never read.

Backends: ``attention_chunk_size=None`` uses ``torch.nn.functional.scaled_dot_product_attention``
with that mask; an integer runs :func:`chunked_attention` (seed 000's "ring attention" on one
device): queries and keys in blocks of that size, blocks entirely outside the causal / window band
skipped, an online softmax (running max and sum) accumulating the output, so no T x T score
matrix exists (in training each query block is checkpointed, so backward recomputes its scores
rather than storing them). Its result equals full attention, padding included.

MLA caches only what DeepSeek-V2 says it must: the normalised latent ``c_kv`` (kv_lora_rank) and
the rotated shared key ``k_pe`` (qk_rope_head_dim) per token. Decoding (a cache that already holds
tokens) attends in the *absorbed* form: ``W_UK`` is folded into the query and ``W_UV`` applied
after attention, which is multi-query attention over the latent (keys ``[c_kv, k_pe]``, values
``c_kv``), so per-head keys and values are never rebuilt. Training and prefill expand keys and
values through ``kv_b_proj`` like transformers' DeepseekV3Attention (fewer FLOPs for long
queries). Both forms are the same function of the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from xoron_pipelines.model.norm import RMSNorm
from xoron_pipelines.model.rope import apply_rotary, softmax_scale

# DeepSeek's latent norms use a fixed eps (transformers' DeepseekV3RMSNorm default).
MLA_NORM_EPS = 1e-6


class KVCache:
    """Per-layer cache of two tensors each, concatenated along the sequence dim (-2).

    MHA/GQA layers store (keys, values) of shape (B, kv_heads, T, head_dim); MLA layers store
    (c_kv, k_pe) of shape (B, T, kv_lora_rank) and (B, T, qk_rope_head_dim).
    """

    def __init__(self, num_layers: int) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    def get_seq_length(self, layer_idx: int = 0) -> int:
        entry = self.layers[layer_idx]
        return 0 if entry is None else entry[0].shape[-2]

    def update(self, layer_idx: int, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's pair and return the whole cached pair for the layer."""
        entry = self.layers[layer_idx]
        if entry is not None:
            a = torch.cat([entry[0], a], dim=-2)
            b = torch.cat([entry[1], b], dim=-2)
        self.layers[layer_idx] = (a, b)
        return a, b

    def nbytes(self) -> int:
        """Bytes held by all cached tensors."""
        return sum(t.numel() * t.element_size() for entry in self.layers if entry for t in entry)


def cache_bytes_per_token(config, dtype: torch.dtype = torch.float32) -> int:
    """KV-cache bytes one token costs over all layers: 2*kv_heads*head_dim (MHA/GQA) or
    kv_lora_rank + qk_rope_head_dim (MLA) elements per layer."""
    if config.attention_type == "mla":
        per_layer = config.kv_lora_rank + config.qk_rope_head_dim
    else:
        per_layer = 2 * config.num_kv_heads * config.attn_head_dim
    return per_layer * config.num_layers * torch.empty((), dtype=dtype).element_size()


# ---------------------------------------------------------------------------- masks and kernels
def allowed_mask(
    q_idx: torch.Tensor, k_idx: torch.Tensor, key_valid: torch.Tensor | None, sliding_window: int | None
) -> torch.Tensor:
    """Boolean (B or 1, 1, len(q_idx), len(k_idx)): may query at cache index q see key k."""
    diff = q_idx[:, None] - k_idx[None, :]
    ok = diff >= 0
    if sliding_window is not None:
        ok = ok & (diff < sliding_window)
    ok = ok[None, None]
    if key_valid is not None:
        ok = ok & (key_valid[:, None, None, :] | (diff == 0)[None, None])
    return ok


def full_attention(q, k, v, scale: float, key_valid, sliding_window, dropout_p: float = 0.0) -> torch.Tensor:
    """SDPA with the causal / window / padding mask. q (B,Hq,Tq,D), k (B,Hk,Tk,D), v (B,Hk,Tk,Dv)."""
    tq, tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if key_valid is None and sliding_window is None and tq == tk:
        # plain causal mask: SDPA's own (its CPU kernel then skips the blocks above the diagonal)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale, is_causal=True, enable_gqa=gqa)
    q_idx = torch.arange(tk - tq, tk, device=q.device)
    k_idx = torch.arange(tk, device=q.device)
    mask = allowed_mask(q_idx, k_idx, key_valid, sliding_window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)


def _query_block(
    q_blk, k, v, q_start: int, scale: float, chunk_size: int, key_valid, sliding_window, dropout_p: float
) -> torch.Tensor:
    """Online-softmax attention of one query block over the key blocks it can see."""
    bsz, heads, n, _ = q_blk.shape
    q_blk = q_blk.float()
    q_idx = torch.arange(q_start, q_start + n, device=q_blk.device)
    run_max = q_blk.new_full((bsz, heads, n, 1), float("-inf"))
    run_sum = q_blk.new_zeros((bsz, heads, n, 1))
    acc = q_blk.new_zeros((bsz, heads, n, v.shape[-1]))
    first = 0 if sliding_window is None else max(0, q_start - sliding_window + 1)
    for ks in range((first // chunk_size) * chunk_size, q_start + n, chunk_size):  # causal: stop at last query
        ke = min(ks + chunk_size, k.shape[2])
        valid = None if key_valid is None else key_valid[:, ks:ke]
        ok = allowed_mask(q_idx, torch.arange(ks, ke, device=q_blk.device), valid, sliding_window)
        scores = (q_blk @ k[:, :, ks:ke].float().transpose(-1, -2)) * scale
        scores = scores.masked_fill(~ok, float("-inf"))
        new_max = torch.maximum(run_max, scores.amax(dim=-1, keepdim=True))
        safe_max = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        probs = torch.exp(scores - safe_max)
        correction = torch.exp(run_max - safe_max)
        run_sum = run_sum * correction + probs.sum(dim=-1, keepdim=True)
        if dropout_p > 0:
            probs = F.dropout(probs, p=dropout_p)
        acc = acc * correction + probs @ v[:, :, ks:ke].float()
        run_max = new_max
    return acc / run_sum


def chunked_attention(
    q, k, v, scale: float, chunk_size: int, key_valid=None, sliding_window=None, dropout_p: float = 0.0
) -> torch.Tensor:
    """Blockwise attention with an online softmax; same result as :func:`full_attention`.

    When gradients are needed each query block runs under activation checkpointing, so backward
    recomputes the block's scores instead of storing them: memory stays O(T * chunk), not O(T^2).
    """
    hq, tq, tk = q.shape[1], q.shape[2], k.shape[2]
    if 1 < k.shape[1] < hq:  # GQA; a single shared head (MQA, MLA's latent) broadcasts as is
        k = k.repeat_interleave(hq // k.shape[1], dim=1)
        v = v.repeat_interleave(hq // v.shape[1], dim=1)
    outputs = []
    for qs in range(0, tq, chunk_size):
        args = (
            q[:, :, qs : qs + chunk_size],
            k,
            v,
            qs + tk - tq,
            scale,
            chunk_size,
            key_valid,
            sliding_window,
            dropout_p,
        )
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            outputs.append(checkpoint(_query_block, *args, use_reentrant=False))
        else:
            outputs.append(_query_block(*args))
    return torch.cat(outputs, dim=2).to(q.dtype)


def attend(config, q, k, v, scale: float, key_valid, training: bool) -> torch.Tensor:
    """Run full or chunked attention as ``config.attention_chunk_size`` says."""
    dropout_p = config.attention_dropout if training else 0.0
    if config.attention_chunk_size is not None:
        return chunked_attention(
            q, k, v, scale, config.attention_chunk_size, key_valid, config.sliding_window, dropout_p
        )
    return full_attention(q, k, v, scale, key_valid, config.sliding_window, dropout_p)


# ---------------------------------------------------------------------------- modules
class Attention(nn.Module):
    """MHA / GQA with q_proj, k_proj, v_proj, o_proj (no bias), Llama layout."""

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.attn_head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.scaling = self.head_dim**-0.5

    def forward(self, x, position_embeddings=None, key_valid=None, past_key_values: KVCache | None = None):
        bsz, tlen, _ = x.shape
        q = self.q_proj(x).view(bsz, tlen, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, tlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, tlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            q = apply_rotary(q, cos, sin, self.config.kernels)
            k = apply_rotary(k, cos, sin, self.config.kernels)
        if past_key_values is not None:
            k, v = past_key_values.update(self.layer_idx, k, v)
        out = attend(self.config, q, k, v, self.scaling, key_valid, self.training)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, tlen, -1))


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V3 names and math, rotate_half rope on the rope dims)."""

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        hidden, heads = config.hidden_size, config.num_heads
        self.num_heads = heads
        self.nope, self.rope, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.kv_lora_rank = config.kv_lora_rank
        self.qk_head_dim = self.nope + self.rope
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, heads * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, config.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, eps=MLA_NORM_EPS, impl=config.kernels)
            self.q_b_proj = nn.Linear(config.q_lora_rank, heads * self.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.kv_lora_rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, eps=MLA_NORM_EPS, impl=config.kernels)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(heads * self.v_dim, hidden, bias=False)
        self.scaling = softmax_scale(config, self.qk_head_dim)

    def _queries(self, x):
        if self.config.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        bsz, tlen, _ = x.shape
        q = q.view(bsz, tlen, self.num_heads, self.qk_head_dim).transpose(1, 2)
        return torch.split(q, [self.nope, self.rope], dim=-1)

    def forward(self, x, position_embeddings=None, key_valid=None, past_key_values: KVCache | None = None):
        bsz, tlen, _ = x.shape
        q_nope, q_pe = self._queries(x)
        c_kv, k_pe = torch.split(self.kv_a_proj_with_mqa(x), [self.kv_lora_rank, self.rope], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)
        k_pe = k_pe[:, None]  # (B, 1, T, rope): one rotated key shared by all heads
        if position_embeddings is not None:
            cos, sin = position_embeddings
            q_pe = apply_rotary(q_pe, cos, sin, self.config.kernels)
            k_pe = apply_rotary(k_pe, cos, sin, self.config.kernels)
        k_pe = k_pe[:, 0]
        decoding = past_key_values is not None and past_key_values.get_seq_length(self.layer_idx) > 0
        if past_key_values is not None:
            c_kv, k_pe = past_key_values.update(self.layer_idx, c_kv, k_pe)
        # prefill/training: expand (cheaper for long queries); decoding: attend over the latent
        attend_fn = self._absorbed if decoding else self._expanded
        return self.o_proj(attend_fn(q_nope, q_pe, c_kv, k_pe, key_valid).transpose(1, 2).reshape(bsz, tlen, -1))

    def _expanded(self, q_nope, q_pe, c_kv, k_pe, key_valid):
        """Keys/values re-expanded per head through kv_b_proj (training; transformers' form)."""
        bsz, tk, _ = c_kv.shape
        kv = self.kv_b_proj(c_kv).view(bsz, tk, self.num_heads, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = torch.split(kv, [self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_pe[:, None].expand(-1, self.num_heads, -1, -1)], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        return attend(self.config, q, k, v, self.scaling, key_valid, self.training)

    def _absorbed(self, q_nope, q_pe, c_kv, k_pe, key_valid):
        """W_UK folded into q, W_UV applied after: MQA over the cached latent (decoding form)."""
        w = self.kv_b_proj.weight.view(self.num_heads, self.nope + self.v_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]
        q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)
        q = torch.cat([q_lat, q_pe], dim=-1)
        k = torch.cat([c_kv, k_pe], dim=-1)[:, None]
        ctx = attend(self.config, q, k, c_kv[:, None], self.scaling, key_valid, self.training)
        return torch.einsum("bhtr,hvr->bhtv", ctx, w_uv)


def build_attention(config, layer_idx: int) -> nn.Module:
    """The attention module ``config.attention_type`` asks for."""
    return MLAttention(config, layer_idx) if config.attention_type == "mla" else Attention(config, layer_idx)
