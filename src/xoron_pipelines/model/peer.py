"""PEER: parameter-efficient expert retrieval with product keys (He, 2024; seed 002 / llm720).

For every head a query network (``query_proj``: hidden -> query_dim, then ``LayerNorm(query_dim)``
when ``peer_batch_norm_query`` - llm720 documents this knob as "Apply LayerNorm to the query", and
LayerNorm, unlike BatchNorm, behaves the same in training and inference) produces a query that
is split into two halves. Each half is scored against its own sub-key table
(``sub_keys_0``: n0 x query_dim/2, ``sub_keys_1``: n1 x query_dim/2, one pair per head); the
top-k of each half gives k x k candidate pairs whose scores add up, and the best k of those are
exactly the top-k of all n0 * n1 experts. Expert ``(i0, i1)`` has the index ``i0 * n1 + i1``,
so every one of the N = n0 * n1 experts is reachable (llm720 adds ``i0 + i1`` and reaches
only n0 + n1 - 1 of them). The selected scores come from differentiable matmuls and feed the
softmax mixing weights, so the sub-keys receive gradients (llm720 reads ``keys.data``).

Experts are tiny MLPs stored as embedding rows: expert e has ``down`` and ``up`` matrices of
shape (expert_hidden_size, hidden) - rows of ``down_embed`` / ``up_embed``
(N x hidden*expert_hidden_size). With h = expert_hidden_size,
``output = sum_heads sum_k w_k * sum_j gelu(down_k[j] . x) * up_k[j]`` (GELU as in llm720).
Only the selected rows are gathered; the up side is an ``embedding_bag`` weighted sum, so no
(tokens x experts x hidden) tensor is formed for it and N = 2^20 fits in memory for small hidden.

Usage tracking: ``usage_counts`` (N,) counts how often each expert was selected, while
training when ``peer_log_expert_usage`` (seed 002's ``log_expert_usage``; the trainer logs
:meth:`PEER.usage_stats` every ``peer_log_freq`` steps) or whenever ``track_usage`` is set;
:meth:`PEER.hot_experts` counts experts used more than ``threshold x`` the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xoron_pipelines.model.moe import recomputing


class PEER(nn.Module):
    """Product-key expert retrieval layer: (B, T, H) -> (B, T, H)."""

    def __init__(self, config, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_experts = config.peer_num_experts
        self.n0, self.n1 = (int(d) for d in config.peer_product_key_dim)
        if self.n0 * self.n1 != self.num_experts:
            raise ValueError(f"peer_product_key_dim {[self.n0, self.n1]} does not multiply to {self.num_experts}")
        self.top_k = config.peer_num_experts_per_tok
        self.num_heads = config.peer_num_heads
        self.query_dim = config.peer_query_dim
        self.expert_hidden_size = config.peer_expert_hidden_size
        self.usage_threshold = float(config.peer_usage_threshold)
        self.initializer_range = config.initializer_range
        half = self.query_dim // 2

        self.query_proj = nn.Linear(self.hidden_size, self.num_heads * self.query_dim, bias=False)
        self.query_norm = nn.LayerNorm(self.query_dim) if config.peer_batch_norm_query else None
        self.sub_keys_0 = nn.Parameter(torch.empty(self.num_heads, self.n0, half))
        self.sub_keys_1 = nn.Parameter(torch.empty(self.num_heads, self.n1, half))
        width = self.hidden_size * self.expert_hidden_size
        self.down_embed = nn.Embedding(self.num_experts, width)
        self.up_embed = nn.Embedding(self.num_experts, width)
        self.register_buffer("usage_counts", torch.zeros(self.num_experts, dtype=torch.long), persistent=False)
        self.track_usage = False
        self.count_in_training = bool(getattr(config, "peer_log_expert_usage", True))
        for module in (self.query_proj, self.down_embed, self.up_embed):
            nn.init.normal_(module.weight, mean=0.0, std=self.initializer_range)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) sub-keys (this module's own parameters).

        The query projection, query norm and expert tables are standard ``nn.Linear`` /
        ``nn.LayerNorm`` / ``nn.Embedding`` modules: initialised in ``__init__`` (same normal
        law) and, inside a model, by transformers' ``_init_weights`` - so resetting the keys never
        overwrites loaded expert tables.
        """
        nn.init.normal_(self.sub_keys_0, mean=0.0, std=self.initializer_range)
        nn.init.normal_(self.sub_keys_1, mean=0.0, std=self.initializer_range)

    # ------------------------------------------------------------------ retrieval
    def queries(self, flat: torch.Tensor) -> torch.Tensor:
        """Per-head queries (M, heads, query_dim), normalised when ``batch_norm_query``."""
        q = self.query_proj(flat).view(flat.shape[0], self.num_heads, self.query_dim)
        return self.query_norm(q) if self.query_norm is not None else q

    def retrieve(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k experts of every head for flat tokens (M, H).

        Returns (scores, indices), both (M, heads, k), best first. ``scores`` are
        differentiable w.r.t. the query network and both sub-key tables.
        """
        q0, q1 = self.queries(flat).chunk(2, dim=-1)
        s0 = torch.einsum("mhd,hnd->mhn", q0, self.sub_keys_0)
        s1 = torch.einsum("mhd,hnd->mhn", q1, self.sub_keys_1)
        top0, i0 = s0.topk(self.top_k, dim=-1)
        top1, i1 = s1.topk(self.top_k, dim=-1)
        pair_scores = (top0.unsqueeze(-1) + top1.unsqueeze(-2)).flatten(-2)  # (M, heads, k*k)
        scores, pair = pair_scores.topk(self.top_k, dim=-1)
        rows = i0.gather(-1, torch.div(pair, self.top_k, rounding_mode="floor"))
        cols = i1.gather(-1, pair % self.top_k)
        return scores, rows * self.n1 + cols

    # ------------------------------------------------------------------ forward
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mix the top-k experts of every head, weighted by the softmax of their scores; sum heads."""
        batch, seq_len, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)
        scores, indices = self.retrieve(flat)
        if ((self.training and self.count_in_training) or self.track_usage) and not recomputing():
            self._count_usage(indices)
        weights = scores.softmax(dim=-1)  # (M, heads, k)
        eh = self.expert_hidden_size
        # row j of expert e's (eh, H) matrix is row e * eh + j of the (N * eh, H) view
        neuron_rows = (indices.unsqueeze(-1) * eh + torch.arange(eh, device=indices.device)).flatten(1)
        down = F.embedding(neuron_rows, self.down_embed.weight.view(-1, hidden))  # (M, heads*k*eh, H)
        activations = F.gelu(torch.bmm(down, flat.unsqueeze(-1)).squeeze(-1))
        mix = activations * weights.unsqueeze(-1).expand(-1, -1, -1, eh).flatten(1).to(activations.dtype)
        output = F.embedding_bag(neuron_rows, self.up_embed.weight.view(-1, hidden), per_sample_weights=mix, mode="sum")
        return output.view(batch, seq_len, hidden)

    # ------------------------------------------------------------------ usage tracking
    @torch.no_grad()
    def _count_usage(self, indices: torch.Tensor) -> None:
        self.usage_counts += torch.bincount(indices.reshape(-1), minlength=self.num_experts)

    def hot_experts(self, threshold: float | None = None) -> int:
        """Number of experts selected more than ``threshold`` x the mean selection count.

        ``threshold`` defaults to ``peer_usage_threshold``; 0 when nothing was counted yet.
        """
        threshold = self.usage_threshold if threshold is None else float(threshold)
        counts = self.usage_counts.double()
        mean = counts.mean()
        if mean == 0:
            return 0
        return int((counts > threshold * mean).sum().item())

    def usage_stats(self) -> dict[str, float]:
        """Summary for logging: fraction of experts ever selected, hot-expert count, max/mean usage."""
        counts = self.usage_counts.double()
        mean = counts.mean().item()
        return {
            "active_fraction": (counts > 0).double().mean().item(),
            "hot_experts": float(self.hot_experts()),
            "max_over_mean": counts.max().item() / mean if mean > 0 else 0.0,
        }

    def reset_usage(self) -> None:
        """Zero the usage counters."""
        self.usage_counts.zero_()
