"""Expert load / usage counters count each token once, also under activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines.model import XoronForCausalLM
from xoron_pipelines.model.config import get_config
from xoron_pipelines.model.moe import MoE
from xoron_pipelines.model.peer import PEER


def _counts(model: XoronForCausalLM) -> int:
    total = 0
    for mod in model.modules():
        if isinstance(mod, PEER):
            total += int(mod.usage_counts.sum())
        elif isinstance(mod, MoE):
            total += int(mod.tokens_per_expert.sum())
    return total


@pytest.mark.parametrize("preset", ["nano-moe-mla", "nano-peer"])
def test_checkpointing_does_not_double_count(preset):
    x = torch.randint(0, 100, (2, 16))
    counts = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = XoronForCausalLM(get_config(preset)).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids=x, labels=x).loss.backward()
        counts.append(_counts(model))
    assert counts[0] > 0
    assert counts[0] == counts[1]
