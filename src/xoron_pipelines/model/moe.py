"""Mixture-of-Experts feed-forward block, DeepSeek-V3 style, in the transformers 5.x layout.

Math and parameter names mirror ``DeepseekV3MoE`` / ``DeepseekV3TopkRouter`` /
``DeepseekV3NaiveMoe`` (sigmoid scoring) and ``Qwen2MoeTopKRouter`` (softmax scoring), so a
converted state dict loads into the native classes unchanged:

* ``gate.weight`` (E, H) and the persistent buffer ``gate.e_score_correction_bias`` (E,);
* ``experts.gate_up_proj`` (E, 2I, H) - gate rows first, then up rows - and
  ``experts.down_proj`` (E, H, I);
* ``shared_experts`` - a dense SwiGLU ``MLP`` with ``I * num_shared_experts`` hidden units,
  always on and added to the routed output (absent when ``num_shared_experts == 0``).

Routing: ``scores = sigmoid|softmax(x @ gate.weight.T)`` in fp32; experts are *selected* by
the top-k of ``scores + e_score_correction_bias``; the combine weights are the *unbiased*
scores of the selected experts (renormalised when ``norm_topk_prob``) times
``routed_scaling_factor``.

Balancing (DeepSeek-V3 paper, section 2.1.2, "auxiliary-loss-free"): the bias is not a
parameter and receives no gradient. While training, the block counts the tokens routed to
each expert; :meth:`MoE.update_bias` (called once per optimizer step) moves every bias by
``bias_update_rate * sign(mean_count - count_i)`` so overloaded experts become less likely
to be selected and underloaded ones more likely. ``bias_update_rate = 0`` disables it.

Optional auxiliary loss (``aux_loss_coef > 0``): DeepSeek-V3's complementary
*sequence-wise* balance loss ``coef * mean_b sum_i f_i P_i`` with
``f_i = E / (k T) * #{t : i selected for token t}`` and ``P_i = mean_t s'_{i,t}``
(``s'`` = scores normalised to sum to one per token). It equals ``coef`` under perfectly
uniform routing and grows as routing concentrates.

Dispatch is vectorised (no loop over tokens): the (token, slot) pairs are sorted by expert id
and permuted into one contiguous buffer, the experts run on their slices, and the outputs are
permuted back and summed over the k slots with their combine weights. Both permutations go
through :class:`_PermuteRows`, whose backward is the inverse gather, not the scatter-add
autograd would run for an ``index_select`` (several times slower on CPU).

Expert matmuls: on CPU ``torch.nn.functional.grouped_mm`` (one call per projection for all
experts, with expert offsets) when the rows are 16-byte aligned, as its kernel requires;
otherwise - and on other devices, where its dtype / architecture support varies and is not
tested here - a loop over the E experts (:meth:`Experts.expert_forward`, one matmul pair each).
grouped_mm's CPU backward rejects a zero-stride or misaligned incoming gradient (for example
the expanded gradient of ``y.sum().backward()``), so its outputs pass through
:class:`_ContiguousGrad`, which hands it a contiguous one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xoron_pipelines import kernels
from xoron_pipelines.model.mlp import MLP

_GROUPED_MM = getattr(F, "grouped_mm", None)


def recomputing() -> bool:
    """True while autograd's backward pass runs this forward again (activation checkpointing).

    Load and usage counters must count each token once, not again during recomputation.
    """
    return torch._C._current_graph_task_id() != -1


class _PermuteRows(torch.autograd.Function):
    """``x[perm]`` for a row permutation ``perm`` with inverse ``inv``; backward is ``grad[inv]``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inv)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inv,) = ctx.saved_tensors
        return grad.index_select(0, inv), None, None


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (for grouped_mm's backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class Router(nn.Module):
    """Top-k router with a selection-only, non-gradient correction bias (``DeepseekV3TopkRouter``)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.scoring = config.router_scoring
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.impl = config.kernels
        self.initializer_range = config.initializer_range
        self.weight = nn.Parameter(torch.empty(self.num_experts, config.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.num_experts, dtype=torch.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) weights and a zero bias, as transformers initialises them."""
        nn.init.normal_(self.weight, mean=0.0, std=self.initializer_range)
        with torch.no_grad():
            self.e_score_correction_bias.zero_()

    def _apply(self, fn, recurse=True):
        """Keep the bias in fp32 through ``.to(bfloat16)``/``.half()`` (as transformers'
        ``_keep_in_fp32_modules_strict``): updates of size ``bias_update_rate`` would be lost
        to bf16 rounding."""
        super()._apply(fn, recurse)
        self._buffers["e_score_correction_bias"] = self.e_score_correction_bias.float()
        return self

    def scores(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Per-expert affinities (N, E) in fp32: sigmoid or softmax of the router logits."""
        logits = F.linear(hidden_states.float(), self.weight.float())
        if self.scoring == "sigmoid":
            return logits.sigmoid()
        return logits.softmax(dim=-1)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Route flat tokens (N, H): return (scores (N, E), combine weights (N, k), expert ids (N, k))."""
        scores = self.scores(hidden_states)
        weights, indices = kernels.router_topk(scores, self.e_score_correction_bias, self.top_k, impl=self.impl)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return scores, weights * self.routed_scaling_factor, indices


class Experts(nn.Module):
    """E SwiGLU experts stored as stacked 3-D tensors (``DeepseekV3NaiveMoe`` layout)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.intermediate_size = config.expert_intermediate_size
        self.impl = config.kernels
        self.initializer_range = config.initializer_range
        hidden, inter = config.hidden_size, config.expert_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, 2 * inter, hidden))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, hidden, inter))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, initializer_range), as transformers initialises ``DeepseekV3NaiveMoe``."""
        nn.init.normal_(self.gate_up_proj, mean=0.0, std=self.initializer_range)
        nn.init.normal_(self.down_proj, mean=0.0, std=self.initializer_range)

    def expert_forward(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """Run expert ``expert`` on the rows ``x`` (n, H) -> (n, H)."""
        gate, up = F.linear(x, self.gate_up_proj[expert]).chunk(2, dim=-1)
        return F.linear(kernels.swiglu(gate, up, impl=self.impl), self.down_proj[expert])

    def use_grouped_mm(self, x: torch.Tensor) -> bool:
        """True when one ``grouped_mm`` per projection can replace the per-expert loop (see module doc)."""
        row_bytes = min(x.shape[-1], self.intermediate_size) * x.element_size()
        return (
            _GROUPED_MM is not None
            and x.device.type == "cpu"
            and x.dtype == self.gate_up_proj.dtype
            and row_bytes % 16 == 0
        )

    def grouped_forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """All experts on expert-sorted rows ``x`` (S, H) with ``counts[e]`` rows each, via grouped_mm."""
        offs = torch.cumsum(counts, dim=0, dtype=torch.int32)
        gate_up = _ContiguousGrad.apply(_GROUPED_MM(x, self.gate_up_proj.transpose(1, 2), offs=offs))
        gate, up = gate_up.chunk(2, dim=-1)
        act = kernels.swiglu(gate, up, impl=self.impl)
        return _ContiguousGrad.apply(_GROUPED_MM(act, self.down_proj.transpose(1, 2), offs=offs))

    def looped_forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`grouped_forward` with one :meth:`expert_forward` call per non-empty expert."""
        outputs = [
            self.expert_forward(expert, chunk)
            for expert, chunk in enumerate(torch.split(x, counts.tolist()))
            if chunk.shape[0] > 0
        ]
        return torch.cat(outputs) if outputs else x.new_zeros(0, x.shape[-1])

    def forward(self, hidden_states: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Sum_k weights[t, k] * expert_{indices[t, k]}(x_t) for flat tokens (N, H), vectorised.

        The N*k (token, slot) pairs are sorted by expert so that every expert sees one
        contiguous slice; the experts run over the E experts, never a loop over tokens.
        """
        n_tokens, hidden = hidden_states.shape
        top_k = indices.shape[-1]
        flat_experts = indices.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        pairs = hidden_states.unsqueeze(1).expand(n_tokens, top_k, hidden).reshape(-1, hidden)
        sorted_inputs = _PermuteRows.apply(pairs, order, inverse)
        run = self.grouped_forward if self.use_grouped_mm(sorted_inputs) else self.looped_forward
        routed = _PermuteRows.apply(run(sorted_inputs, counts), inverse, order).view(n_tokens, top_k, hidden)
        return (routed * weights.unsqueeze(-1)).sum(dim=1).to(hidden_states.dtype)


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """DeepSeek-V3 complementary sequence-wise balance loss, without the coefficient.

    ``scores`` (B, T, E) are the router affinities, ``indices`` (B, T, k) the selected
    experts. Returns ``mean_b sum_i f_i P_i``: 1.0 for perfectly uniform routing, larger when
    tokens of a sequence concentrate on few experts. Gradients flow through ``P`` only.
    """
    _, seq_len, top_k = indices.shape
    normalised = scores / scores.sum(dim=-1, keepdim=True)
    prob = normalised.mean(dim=1)  # (B, E)
    with torch.no_grad():
        per_seq = indices.reshape(indices.shape[0], -1)
        counts = torch.zeros_like(prob).scatter_add_(1, per_seq, torch.ones_like(per_seq, dtype=prob.dtype))
        frac = counts * num_experts / (top_k * seq_len)
    return (frac * prob).sum(dim=-1).mean()


class MoE(nn.Module):
    """Routed SwiGLU experts + optional shared experts + aux-loss-free load balancing.

    After ``forward``: ``self.aux_loss`` holds the (coefficient-scaled) auxiliary loss, a zero
    tensor when ``aux_loss_coef == 0``. While ``self.training`` the tokens routed to each
    expert are counted in ``tokens_per_expert`` (the current window) and
    ``total_tokens_per_expert`` (cumulative, for tracking); both are non-persistent buffers.
    """

    def __init__(self, config, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.bias_update_rate = float(config.bias_update_rate)
        self.aux_loss_coef = float(config.aux_loss_coef)
        self.gate = Router(config)
        self.experts = Experts(config)
        shared = config.num_shared_experts
        self.shared_experts = MLP(config, config.expert_intermediate_size * shared) if shared > 0 else None
        # integer counters: unaffected by .to(dtype), exact for any number of tokens
        counter = torch.zeros(self.num_experts, dtype=torch.long)
        self.register_buffer("tokens_per_expert", counter.clone(), persistent=False)
        self.register_buffer("total_tokens_per_expert", counter.clone(), persistent=False)
        self.register_buffer("last_window_tokens", counter.clone(), persistent=False)
        self.aux_loss = torch.zeros(())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T, H): routed experts (+ shared experts)."""
        batch, seq_len, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)
        scores, weights, indices = self.gate(flat)
        output = self.experts(flat, indices, weights)
        if self.shared_experts is not None:
            output = output + self.shared_experts(flat)
        if self.training and not recomputing():
            self._count_tokens(indices)
        if self.aux_loss_coef > 0:
            loss = sequence_balance_loss(
                scores.view(batch, seq_len, -1), indices.reshape(batch, seq_len, -1), self.num_experts
            )
            self.aux_loss = self.aux_loss_coef * loss
        else:
            self.aux_loss = scores.new_zeros(())
        return output.view(batch, seq_len, hidden)

    @torch.no_grad()
    def _count_tokens(self, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices.reshape(-1), minlength=self.num_experts)
        self.tokens_per_expert += counts
        self.total_tokens_per_expert += counts

    @torch.no_grad()
    def update_bias(self) -> None:
        """Apply ``b_i += rate * sign(mean_count - count_i)`` for the window since the last call.

        Counts are summed over data-parallel ranks first when torch.distributed is running, so
        every rank applies the same update. The window is then stored (see :meth:`expert_load`)
        and the accumulator reset. A window without tokens leaves the bias unchanged.
        """
        counts = self.tokens_per_expert.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        if counts.sum() > 0:
            if self.bias_update_rate > 0:
                error = counts.float().mean() - counts.float()
                self.gate.e_score_correction_bias += self.bias_update_rate * torch.sign(error)
            self.last_window_tokens.copy_(counts)
        self.tokens_per_expert.zero_()

    def expert_load(self) -> torch.Tensor:
        """Fraction of routed (token, slot) pairs per expert (E,), summing to 1.

        Over the window being accumulated since the last :meth:`update_bias` when it holds
        tokens, otherwise over the window that call consumed (zeros before any training step).
        """
        counts = self.tokens_per_expert if self.tokens_per_expert.sum() > 0 else self.last_window_tokens
        return counts.float() / counts.sum().clamp(min=1)

    def reset_load_stats(self) -> None:
        """Clear the window, the last window and the cumulative counters (not the bias)."""
        self.tokens_per_expert.zero_()
        self.total_tokens_per_expert.zero_()
        self.last_window_tokens.zero_()
