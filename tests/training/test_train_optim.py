"""AdamW construction: decay groups, betas/eps/weight decay taking effect, 8-bit option."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from xoron_pipelines.training import OptimizerUnavailableError, TrainConfig, build_optimizer


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))


def test_weight_decay_only_on_matrices():
    model = _model()
    cfg = TrainConfig(max_steps=1, learning_rate=0.1, weight_decay=0.5)
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only decoupled weight decay moves weights
    opt.step()
    after = dict(model.named_parameters())
    assert torch.allclose(after["0.weight"], before["0.weight"] * (1 - 0.1 * 0.5))
    for name in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[name], before[name]), name


def test_betas_and_eps_reach_adam_state():
    model = _model()
    cfg = TrainConfig(max_steps=1, learning_rate=1e-3, weight_decay=0.0, betas=(0.5, 0.75), eps=1e-3)
    opt = build_optimizer(model, cfg)
    p = model[0].weight
    g = torch.full_like(p, 2.0)
    for _ in range(2):
        p.grad = g.clone()
        opt.step()
    state = opt.state[p]
    # m = (1-b1) g + b1 (1-b1) g ; v = (1-b2) g^2 + b2 (1-b2) g^2
    assert torch.allclose(state["exp_avg"], g * (0.5 + 0.5 * 0.5))
    assert torch.allclose(state["exp_avg_sq"], g * g * (0.25 + 0.75 * 0.25))
    assert opt.param_groups[0]["eps"] == 1e-3 and opt.param_groups[0]["betas"] == (0.5, 0.75)


def test_frozen_parameters_are_left_out():
    model = _model()
    model[1].requires_grad_(False)
    opt = build_optimizer(model, TrainConfig(max_steps=1))
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_8bit_without_bitsandbytes_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    for cfg in (TrainConfig(max_steps=1, optimizer="adamw_8bit"), TrainConfig(max_steps=1, use_8bit_optimizer=True)):
        with pytest.raises(OptimizerUnavailableError, match="needs the bitsandbytes package.*optimizer: adamw"):
            build_optimizer(_model(), cfg)


def test_fused_adamw_on_cpu_matches_multi_tensor_adamw():
    """The optimizer runs torch's fused AdamW kernel on the CPU and takes the same steps as the
    multi-tensor AdamW (float rounding apart), weight decay and both parameter groups included."""
    cfg = TrainConfig(max_steps=1, learning_rate=1e-2, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-6)
    fused_model, ref_model = _model(), _model()
    opt = build_optimizer(fused_model, cfg)
    assert opt.defaults["fused"] is True
    ref = torch.optim.AdamW(
        [
            {"params": [ref_model[0].weight], "weight_decay": 0.1},
            {"params": [ref_model[0].bias, *ref_model[1].parameters()], "weight_decay": 0.0},
        ],
        lr=1e-2,
        betas=(0.8, 0.9),
        eps=1e-6,
        foreach=True,
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(8, 3, generator=gen)
        for model, o in ((fused_model, opt), (ref_model, ref)):
            model(x).pow(2).mean().backward()
            o.step()
            o.zero_grad(set_to_none=True)
    moved = (fused_model[0].weight - _model()[0].weight).abs().max()
    assert moved > 1e-2  # the steps did something
    for (name, p), q in zip(fused_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6, msg=name)


def test_fused_adamw_only_where_torch_has_the_kernel():
    from xoron_pipelines.training.optim import fused_supported

    floats = [{"params": [nn.Parameter(torch.zeros(2))]}]
    assert fused_supported(floats)
    assert not fused_supported([{"params": [nn.Parameter(torch.zeros(2, device="meta"))]}])
    assert not fused_supported([{"params": []}])
