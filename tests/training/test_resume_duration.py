"""A run continued with a larger ``max_steps`` / ``num_epochs``: it picks up the finished
checkpoint, and from the resume point on the learning rate is that of the new total's schedule."""

from __future__ import annotations

import pytest
import torch

from tests.training.tiny_lm import TinyLM
from xoron_pipelines.training import TensorBatchSource, TrainConfig, train


def _source():
    g = torch.Generator().manual_seed(0)
    return TensorBatchSource(torch.randint(0, 32, (16, 8), generator=g), batch_size=4, seed=0)


def _run(ckpt, **kw):
    torch.manual_seed(0)
    model = TinyLM(dropout=0.0)
    cfg = TrainConfig(
        **{
            "learning_rate": 1e-2,
            "lr_scheduler": "cosine",
            "warmup_steps": 1,
            "save_steps": 1000,
            "logging_steps": 1,
            "deterministic": True,
            "seed": 3,
            **kw,
        }
    )
    logs = []
    result = train(model, _source(), cfg, ckpt_dir=ckpt, on_log=lambda s, m: logs.append((s, m)), progress=False)
    return model, result, {s: m["lr"] for s, m in logs if "lr" in m}


def test_raised_max_steps_continues_on_the_new_schedule(tmp_path):
    _, short, _ = _run(tmp_path / "a", max_steps=4)
    assert short.state.finished and short.state.step == 4
    _, longer, lrs = _run(tmp_path / "a", max_steps=8)
    assert longer.resumed_from == tmp_path / "a" / "checkpoint-4" and longer.state.step == 8
    assert longer.state.total_steps == 8 and longer.state.finished
    _, _, fresh = _run(tmp_path / "b", max_steps=8)
    assert sorted(lrs) == [5, 6, 7, 8]
    assert [lrs[s] for s in (5, 6, 7, 8)] == pytest.approx([fresh[s] for s in (5, 6, 7, 8)])


def test_raised_num_epochs_continues(tmp_path):
    _, one, _ = _run(tmp_path / "a", num_epochs=1)  # 4 batches per epoch: 4 steps
    _, two, lrs = _run(tmp_path / "a", num_epochs=2)
    assert one.state.step == 4 and two.resumed_from is not None and two.state.step == 8
    assert two.state.epoch == 2 and sorted(lrs) == [5, 6, 7, 8]
