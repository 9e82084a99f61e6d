"""Learning-rate schedules: hand-computed factors, parity with transformers, and the lr AdamW sees."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from xoron_pipelines.training import TrainConfig, WarmupDecay, build_scheduler


def test_warmup_is_linear_from_zero():
    f = WarmupDecay("cosine", total_steps=10, warmup_steps=4)
    assert [f(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_cosine_midpoint_and_endpoint():
    f = WarmupDecay("cosine", total_steps=10, warmup_steps=4, min_lr_ratio=0.1)
    # step 7: progress (7-4)/(10-4) = 0.5 -> cos term 0.5 -> 0.1 + 0.9 * 0.5
    assert f(7) == pytest.approx(0.55)
    # step 5: progress 1/6 -> 0.1 + 0.9 * 0.5 * (1 + cos(pi/6))
    assert f(5) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(3) / 2))
    assert f(10) == pytest.approx(0.1) and f(25) == pytest.approx(0.1)  # floor at min_lr_ratio


def test_linear_and_constant():
    lin = WarmupDecay("linear", total_steps=12, warmup_steps=2)
    assert [lin(s) for s in (0, 1, 2, 7, 12)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    assert WarmupDecay("linear", 12, 2, min_lr_ratio=0.2)(7) == pytest.approx(0.2 + 0.8 * 0.5)
    const = WarmupDecay("constant", total_steps=12, warmup_steps=3)
    assert [const(s) for s in (0, 1, 3, 11, 50)] == pytest.approx([0.0, 1 / 3, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "kind,reference",
    [("cosine", get_cosine_schedule_with_warmup), ("linear", get_linear_schedule_with_warmup), ("constant", None)],
)
def test_parity_with_transformers(kind, reference):
    total, warmup = 17, 5
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    if reference is None:
        ref = get_constant_schedule_with_warmup(ref_opt, warmup)
    else:
        ref = reference(ref_opt, warmup, total)
    f = WarmupDecay(kind, total, warmup)
    for step in range(total + 1):
        assert f(step) == pytest.approx(ref.lr_lambdas[0](step), abs=1e-12), step


def test_scheduler_drives_optimizer_lr():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.2)
    sched = build_scheduler(opt, "cosine", total_steps=6, warmup_steps=2)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(
        [0.0, 0.1, 0.2, 0.2 * (0.5 + 0.5 * math.cos(math.pi / 4)), 0.1, 0.2 * (0.5 + 0.5 * math.cos(3 * math.pi / 4))]
    )


def test_warmup_ratio_and_steps_from_config():
    assert TrainConfig(max_steps=100, warmup_ratio=0.05).warmup(100) == 5
    assert TrainConfig(max_steps=10, warmup_ratio=0.05).warmup(10) == 1  # ceil
    assert TrainConfig(max_steps=100, warmup_steps=7).warmup(100) == 7
    assert TrainConfig(max_steps=100).warmup(100) == 0
    with pytest.raises(ValueError, match="unknown lr schedule"):
        WarmupDecay("polynomial", 10)
