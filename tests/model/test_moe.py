"""MoE block: vectorised dispatch vs a per-token loop, transformers parity, bias balancing, aux loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xoron_pipelines.model import moe as moe_module
from xoron_pipelines.model.config import XoronConfig
from xoron_pipelines.model.moe import MoE, sequence_balance_loss

HIDDEN = 16

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make_config(**overrides) -> XoronConfig:
    """A tiny dense-attention config whose MoE knobs are set by ``overrides``."""
    base = dict(
        hidden_size=HIDDEN,
        num_heads=2,
        attention_type="mha",
        rope_scaling=None,
        num_layers=2,
        intermediate_size=32,
        vocab_size=64,
        num_experts=8,
        num_experts_per_tok=2,
        num_shared_experts=1,
        moe_intermediate_size=8,
        router_scoring="sigmoid",
        norm_topk_prob=True,
        routed_scaling_factor=1.0,
        bias_update_rate=0.01,
        aux_loss_coef=0.0,
        kernels="torch",
    )
    base.update(overrides)
    return XoronConfig(**base)


def make_moe(seed: int = 0, random_bias: bool = False, **overrides) -> MoE:
    """MoE with O(1) random weights (so routing is far from ties) and optionally a random bias."""
    torch.manual_seed(seed)
    moe = MoE(make_config(**overrides), layer_idx=1)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0.0, 0.3)
        if random_bias:
            moe.gate.e_score_correction_bias.normal_(0.0, 0.2)
    return moe


def reference_forward(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Slow per-token loop written from the routing equations, independent of the module's code."""
    cfg_k, scale = moe.top_k, moe.gate.routed_scaling_factor
    flat = x.reshape(-1, x.shape[-1])
    rows = []
    for t in range(flat.shape[0]):
        xt = flat[t]
        logits = moe.gate.weight.float() @ xt.float()
        scores = logits.sigmoid() if moe.gate.scoring == "sigmoid" else logits.softmax(-1)
        chosen = torch.topk(scores + moe.gate.e_score_correction_bias, cfg_k).indices
        w = scores[chosen]
        if moe.gate.norm_topk_prob:
            w = w / w.sum()
        w = w * scale
        out = torch.zeros_like(xt)
        for j, e in enumerate(chosen.tolist()):
            gu = moe.experts.gate_up_proj[e] @ xt
            inter = moe.experts.intermediate_size
            h = F.silu(gu[:inter]) * gu[inter:]
            out = out + w[j] * (moe.experts.down_proj[e] @ h)
        if moe.shared_experts is not None:
            s = moe.shared_experts
            out = out + s.down_proj.weight @ (F.silu(s.gate_proj.weight @ xt) * (s.up_proj.weight @ xt))
        rows.append(out)
    return torch.stack(rows).view_as(x)


def grads(module: torch.nn.Module, x: torch.Tensor, fn) -> dict[str, torch.Tensor]:
    """Gradients of sum(fn(x) * fixed random weights) w.r.t. every parameter and the input."""
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    (fn(x) * probe).sum().backward()
    out = {name: p.grad.clone() for name, p in module.named_parameters()}
    out["input"] = x.grad.clone()
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"router_scoring": "softmax", "norm_topk_prob": False, "num_shared_experts": 0},
        {"num_experts_per_tok": 3, "routed_scaling_factor": 2.5, "num_shared_experts": 2},
        {"num_experts_per_tok": 1, "norm_topk_prob": False},
    ],
)
def test_vectorised_matches_per_token_loop_forward_and_grads(overrides):
    moe = make_moe(random_bias=True, **overrides)
    x = torch.randn(3, 7, HIDDEN)
    torch.testing.assert_close(moe(x), reference_forward(moe, x), atol=1e-5, rtol=1e-5)
    fast = grads(moe, x, moe)
    slow = grads(moe, x, lambda inp: reference_forward(moe, inp))
    assert fast.keys() == slow.keys()
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-5, msg=name)
    assert fast["experts.gate_up_proj"].abs().sum() > 0


def test_expert_without_tokens_gets_zero_grad():
    moe = make_moe(num_shared_experts=0)
    with torch.no_grad():
        moe.gate.e_score_correction_bias[5] = -10.0  # expert 5 is never selected
    x = torch.randn(2, 6, HIDDEN)
    moe(x).sum().backward()
    assert moe.experts.gate_up_proj.grad[5].abs().sum() == 0
    assert moe.experts.gate_up_proj.grad[[0, 1, 2, 3, 4, 6, 7]].abs().sum() > 0


def test_parity_with_transformers_deepseek_v3_moe():
    from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    moe = make_moe(random_bias=True, num_shared_experts=2, routed_scaling_factor=2.5, num_experts_per_tok=3)
    hf_config = DeepseekV3Config(
        hidden_size=HIDDEN,
        moe_intermediate_size=8,
        n_routed_experts=8,
        num_experts_per_tok=3,
        n_shared_experts=2,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        hidden_act="silu",
    )
    hf_config._experts_implementation = "eager"
    hf = DeepseekV3MoE(hf_config)
    assert sorted(hf.state_dict()) == sorted(moe.state_dict())  # identical names: conversion is identity
    hf.load_state_dict(moe.state_dict())
    x = torch.randn(2, 9, HIDDEN)
    torch.testing.assert_close(moe(x), hf(x), atol=1e-6, rtol=1e-6)
    ours, theirs = grads(moe, x, moe), grads(hf, x, hf)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5, msg=name)


def test_softmax_routing_matches_qwen2_moe_router_and_experts():
    from transformers.models.qwen2_moe.configuration_qwen2_moe import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    for norm in (False, True):
        moe = make_moe(router_scoring="softmax", num_shared_experts=0, norm_topk_prob=norm)
        qc = Qwen2MoeConfig(
            hidden_size=HIDDEN,
            moe_intermediate_size=8,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=norm,
            shared_expert_intermediate_size=8,
        )
        qc._experts_implementation = "eager"
        qwen = Qwen2MoeSparseMoeBlock(qc)
        qwen.load_state_dict(moe.state_dict(), strict=False)  # gate + experts; Qwen's gated shared expert unused
        x = torch.randn(2, 9, HIDDEN)
        flat = x.view(-1, HIDDEN)
        _, weights, indices = qwen.gate(flat)
        torch.testing.assert_close(moe(x), qwen.experts(flat, indices, weights).view_as(x), atol=1e-6, rtol=1e-6)


def test_router_weights_are_unbiased_scores_and_bias_only_selects():
    moe = make_moe(norm_topk_prob=False, num_experts_per_tok=1)
    with torch.no_grad():
        moe.gate.e_score_correction_bias[3] = 5.0
    flat = torch.randn(10, HIDDEN)
    scores, weights, indices = moe.gate(flat)
    assert (indices == 3).all()  # bias forces the selection ...
    torch.testing.assert_close(weights[:, 0], scores[:, 3])  # ... but not the weight
    torch.testing.assert_close(scores, torch.sigmoid(flat @ moe.gate.weight.T))


def test_bias_is_a_buffer_without_gradient():
    moe = make_moe()
    names = dict(moe.named_parameters())
    assert "gate.e_score_correction_bias" not in names
    assert all(p is not moe.gate.e_score_correction_bias for p in moe.parameters())
    assert "gate.e_score_correction_bias" in moe.state_dict()  # persistent, as in transformers
    assert not moe.gate.e_score_correction_bias.requires_grad
    moe(torch.randn(2, 4, HIDDEN)).sum().backward()
    assert moe.gate.e_score_correction_bias.grad is None
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    # tracking counters are not weights: they stay out of the state dict
    assert not any("tokens_per_expert" in k or "window" in k for k in moe.state_dict())


def _skewed_run(scoring: str, rate: float, steps: int = 250) -> tuple[float, float, torch.Tensor]:
    """Router biased towards experts 0 and 1; forward + update_bias only (no gradient step).

    Returns (coefficient of variation of the first window's load, of the last 20 windows' mean
    load, that mean load).
    """
    moe = make_moe(seed=3, router_scoring=scoring, bias_update_rate=rate, num_shared_experts=0)
    with torch.no_grad():
        moe.gate.weight.mul_(0.3)
        moe.gate.weight[:2, 0] += 3.0  # inputs carry +1 on feature 0, so experts 0/1 dominate
    moe.train()
    gen = torch.Generator().manual_seed(11)
    loads = []
    with torch.no_grad():
        for _ in range(steps):
            x = torch.randn(4, 32, HIDDEN, generator=gen)
            x[..., 0] += 1.0
            moe(x)
            moe.update_bias()
            loads.append(moe.expert_load())
    first = loads[0]
    final = torch.stack(loads[-20:]).mean(0)

    def cv(load):
        return (load.std() / load.mean()).item()

    return cv(first), cv(final), final


@pytest.mark.parametrize("scoring", ["sigmoid", "softmax"])
def test_skewed_router_becomes_balanced_by_bias_updates(scoring):
    start_cv, end_cv, final = _skewed_run(scoring, rate=0.01)
    assert start_cv > 1.0  # experts 0 and 1 take most of the tokens at the start
    assert end_cv < 0.15 and end_cv < start_cv / 8
    assert (final.max() / final.min()).item() < 1.6


def test_without_bias_updates_router_stays_skewed():
    start_cv, end_cv, final = _skewed_run("sigmoid", rate=0.0, steps=40)
    assert start_cv > 1.0 and end_cv > 1.0
    assert final[:2].sum() > 0.7


def test_update_bias_rule_and_load_windows():
    moe = make_moe(bias_update_rate=0.05, num_experts_per_tok=1, num_shared_experts=0)
    moe.train()
    x = torch.randn(3, 5, HIDDEN)
    with torch.no_grad():
        _, _, idx = moe.gate(x.view(-1, HIDDEN))
        moe(x)
        moe(x)
    counts = 2 * torch.bincount(idx.reshape(-1), minlength=8).float()
    torch.testing.assert_close(moe.tokens_per_expert.float(), counts)
    torch.testing.assert_close(moe.expert_load(), counts / counts.sum())
    before = moe.gate.e_score_correction_bias.clone()
    moe.update_bias()
    expected = before + 0.05 * torch.sign(counts.mean() - counts)
    torch.testing.assert_close(moe.gate.e_score_correction_bias, expected)
    assert moe.tokens_per_expert.sum() == 0  # window reset ...
    torch.testing.assert_close(moe.expert_load(), counts / counts.sum())  # ... last window still reported
    torch.testing.assert_close(moe.total_tokens_per_expert.float(), counts)  # cumulative kept
    moe.eval()
    with torch.no_grad():
        moe(x)
    assert moe.tokens_per_expert.sum() == 0  # no counting in eval mode
    moe.update_bias()  # empty window: bias unchanged
    torch.testing.assert_close(moe.gate.e_score_correction_bias, expected)
    moe.reset_load_stats()
    assert moe.expert_load().sum() == 0 and moe.total_tokens_per_expert.sum() == 0
    torch.testing.assert_close(moe.gate.e_score_correction_bias, expected)  # the bias is kept


def test_zero_rate_never_moves_bias():
    moe = make_moe(bias_update_rate=0.0).train()
    with torch.no_grad():
        moe(torch.randn(2, 8, HIDDEN))
    moe.update_bias()
    assert moe.gate.e_score_correction_bias.abs().sum() == 0
    assert torch.isclose(moe.expert_load().sum(), torch.tensor(1.0))


def test_aux_loss_zero_when_coef_zero_and_scaled_and_differentiable_otherwise():
    x = torch.randn(2, 8, HIDDEN)
    off = make_moe(aux_loss_coef=0.0)
    off(x)
    assert off.aux_loss.item() == 0.0
    on = make_moe(aux_loss_coef=0.5)
    on(x)
    raw = sequence_balance_loss(
        on.gate.scores(x.view(-1, HIDDEN)).view(2, 8, -1), on.gate(x.view(-1, HIDDEN))[2].reshape(2, 8, -1), 8
    )
    assert on.aux_loss.item() > 0
    torch.testing.assert_close(on.aux_loss, 0.5 * raw)
    on.aux_loss.backward()
    assert on.gate.weight.grad.abs().sum() > 0


def test_balance_loss_is_one_for_uniform_routing_and_larger_when_skewed():
    batch, seq, experts, k = 2, 8, 8, 2
    uniform_scores = torch.full((batch, seq, experts), 0.5)
    round_robin = torch.arange(seq * k).view(1, seq, k).expand(batch, -1, -1) % experts
    assert sequence_balance_loss(uniform_scores, round_robin, experts).item() == pytest.approx(1.0)
    skew_scores = torch.full((batch, seq, experts), 0.1)
    skew_scores[..., :2] = 0.9
    skew_idx = torch.tensor([0, 1]).expand(batch, seq, k)
    # f = (4, 4, 0, ...) and P = 0.9 / 2.4 for experts 0 and 1 -> 2 * 4 * 0.375 = 3
    assert sequence_balance_loss(skew_scores, skew_idx, experts).item() == pytest.approx(3.0)


def test_aux_loss_gradient_descent_balances_a_skewed_router():
    """Minimising the loss alone (softmax scoring, no bias) spreads the load of a skewed router."""
    moe = make_moe(seed=3, router_scoring="softmax", aux_loss_coef=1.0, bias_update_rate=0.0, num_shared_experts=0)
    with torch.no_grad():
        moe.gate.weight.mul_(0.3)
        moe.gate.weight[:2, 0] += 3.0
    moe.train()
    opt = torch.optim.SGD([moe.gate.weight], lr=1.0)
    gen = torch.Generator().manual_seed(5)
    losses, cvs = [], []
    for _ in range(40):
        x = torch.randn(4, 32, HIDDEN, generator=gen)
        x[..., 0] += 1.0
        moe(x)
        load = moe.expert_load()
        losses.append(moe.aux_loss.item())
        cvs.append((load.std() / load.mean()).item())
        moe.update_bias()
        opt.zero_grad()
        moe.aux_loss.backward()
        opt.step()
    assert losses[0] > 2.0 and cvs[0] > 1.0
    assert max(losses[-5:]) < 1.1 and max(cvs[-5:]) < 0.6


def test_knobs_change_output():
    x = torch.randn(2, 5, HIDDEN)
    with_shared, without_shared = make_moe(num_shared_experts=1), make_moe(num_shared_experts=0)
    assert without_shared.shared_experts is None
    without_shared.load_state_dict(with_shared.state_dict(), strict=False)
    shared_out = with_shared.shared_experts(x)
    torch.testing.assert_close(with_shared(x), without_shared(x) + shared_out)
    assert (shared_out.abs() > 1e-3).any()
    # shared experts have I * num_shared_experts hidden units
    assert make_moe(num_shared_experts=3).shared_experts.gate_proj.weight.shape == (8 * 3, HIDDEN)

    top1, top2 = make_moe(num_experts_per_tok=1), make_moe(num_experts_per_tok=2)
    top2.load_state_dict(top1.state_dict())
    assert not torch.allclose(top1(x), top2(x), atol=1e-4)

    base = make_moe(num_shared_experts=0, routed_scaling_factor=1.0)
    scaled = make_moe(num_shared_experts=0, routed_scaling_factor=2.5)
    scaled.load_state_dict(base.state_dict())
    torch.testing.assert_close(scaled(x), 2.5 * base(x))

    normed, raw = make_moe(norm_topk_prob=True), make_moe(norm_topk_prob=False)
    raw.load_state_dict(normed.state_dict())
    assert not torch.allclose(normed(x), raw(x), atol=1e-4)


def test_bf16_forward_keeps_dtype_and_fp32_router():
    moe = make_moe().to(torch.bfloat16)
    x = torch.randn(2, 4, HIDDEN, dtype=torch.bfloat16)
    y = moe(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    assert moe.gate.scores(x.view(-1, HIDDEN)).dtype == torch.float32


def test_dispatch_runs_each_expert_once_whatever_the_token_count(monkeypatch):
    """No Python loop over tokens: 1,024 tokens cost at most one expert call per expert (loop path)."""
    moe = make_moe(num_shared_experts=0)
    monkeypatch.setattr(moe.experts, "use_grouped_mm", lambda x: False)
    calls = []
    original = moe.experts.expert_forward
    monkeypatch.setattr(moe.experts, "expert_forward", lambda e, x: calls.append((e, x.shape[0])) or original(e, x))
    with torch.no_grad():
        _, _, idx = moe.gate(torch.randn(1, HIDDEN))  # warm-up, not counted
        x = torch.randn(4, 256, HIDDEN)
        _, _, idx = moe.gate(x.view(-1, HIDDEN))
        moe(x)
    experts = [e for e, _ in calls]
    assert len(experts) == len(set(experts)) <= moe.num_experts
    counts = torch.bincount(idx.reshape(-1), minlength=8)
    assert {e: n for e, n in calls} == {e: int(counts[e]) for e in range(8) if counts[e] > 0}


def test_grouped_mm_dispatch_is_two_calls_with_expert_offsets(monkeypatch):
    """CPU fp32 path: one grouped_mm per projection for all 1,024 tokens, no per-expert calls."""
    moe = make_moe(num_shared_experts=0)
    calls = []
    real = moe_module._GROUPED_MM
    monkeypatch.setattr(
        moe_module, "_GROUPED_MM", lambda a, b, offs: calls.append(offs.tolist()) or real(a, b, offs=offs)
    )
    monkeypatch.setattr(moe.experts, "expert_forward", lambda e, x: pytest.fail("per-expert loop used"))
    x = torch.randn(4, 256, HIDDEN)
    with torch.no_grad():
        _, _, idx = moe.gate(x.view(-1, HIDDEN))
        moe(x)
    offsets = torch.bincount(idx.reshape(-1), minlength=8).cumsum(0).tolist()
    assert calls == [offsets, offsets]


def test_grouped_mm_and_loop_paths_agree_including_expanded_gradients(monkeypatch):
    """Forward and gradients of both expert paths match; ``y.sum().backward()`` (zero-stride grad) works."""
    moe = make_moe(random_bias=True)
    x = torch.randn(3, 9, HIDDEN)
    assert moe.experts.use_grouped_mm(x.view(-1, HIDDEN))
    grouped = grads(moe, x, moe)
    moe.zero_grad()
    moe(x).sum().backward()
    expanded = {name: p.grad.clone() for name, p in moe.named_parameters()}
    monkeypatch.setattr(moe.experts, "use_grouped_mm", lambda inp: False)
    looped = grads(moe, x, moe)
    moe.zero_grad()
    moe(x).sum().backward()
    for name in grouped:
        torch.testing.assert_close(grouped[name], looped[name], atol=1e-5, rtol=1e-5, msg=name)
    for name, p in moe.named_parameters():
        torch.testing.assert_close(expanded[name], p.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_triton_kernels_path_matches_reference():
    """kernels="triton" (interpreted on CPU) routes router top-k and SwiGLU through Triton."""
    moe = make_moe(random_bias=True, kernels="triton")
    x = torch.randn(2, 3, HIDDEN)
    torch.testing.assert_close(moe(x), reference_forward(moe, x), atol=1e-5, rtol=1e-5)
    fast = grads(moe, x, moe)
    slow = grads(moe, x, lambda inp: reference_forward(moe, inp))
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-5, msg=name)
