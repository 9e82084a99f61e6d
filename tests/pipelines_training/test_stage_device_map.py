"""The stage's ``distributed.device_map`` knob takes effect: an explicit map places the model's parts
(here all on the CPU, the one device a CPU runner has) and the stage trains to exactly the weights of
the unplaced stage; ``auto`` without a GPU places nothing and says so; a map naming a GPU that is not
there fails naming the key before training."""

from __future__ import annotations

import pytest
import torch

from tests.pipelines_training.stage_helpers import packed_shards, stage
from tests.training.finetune_helpers import nano_model
from xoron_pipelines.datasets.parquet_shards import PackedMixes
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training import stage as stage_mod

ALL_CPU = {"embed": "cpu", "layers.0": "cpu", "layers.1": "cpu", "head": "cpu"}  # nano-moe-mla: 2 layers


@pytest.fixture
def shards(tmp_path):
    return (
        packed_shards(tmp_path / "train", rows=16),
        packed_shards(tmp_path / "val", rows=4, seed=1),
        PackedMixes(tmp_path),
    )


def test_an_explicit_device_map_places_the_parts_and_trains_identically(tmp_path, shards, monkeypatch):
    placed = []
    real = stage_mod.place_model
    monkeypatch.setattr(stage_mod, "place_model", lambda model, plan: placed.append(plan) or real(model, plan))
    plain, _ = nodes.train_causal_lm(nano_model("nano-moe-mla"), None, *shards, stage(tmp_path / "a"), stage="lm")[:2]
    assert placed == []
    params = stage(tmp_path / "b", distributed={"device_map": ALL_CPU})
    mapped, _ = nodes.train_causal_lm(nano_model("nano-moe-mla"), None, *shards, params, stage="lm")[:2]
    assert len(placed) == 1 and set(placed[0]) == {"embed", "layers.0", "layers.1", "head"}
    assert mapped.model.layers[0]._forward_pre_hooks  # activations follow the parts
    start = nano_model("nano-moe-mla").state_dict()
    a, b = plain.state_dict(), mapped.state_dict()
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3  # it trained
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_without_a_gpu_places_nothing_and_a_missing_gpu_is_an_error(tmp_path, shards, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    params = stage(tmp_path / "a", train={"max_steps": 1}, distributed={"use_model_parallel": True})
    with caplog.at_level("INFO"):
        nodes.train_causal_lm(nano_model(), None, *shards, params, stage="lm")
    assert "stages.lm.distributed.device_map auto: no CUDA GPU visible, nothing to place" in caplog.text
    params = stage(tmp_path / "b", distributed={"device_map": {**ALL_CPU, "layers.1": "cuda:1"}})
    with pytest.raises(
        ValueError, match=r"stages\.lm\.distributed\.device_map\.layers\.1 is cuda:1 but no CUDA device"
    ):
        nodes.train_causal_lm(nano_model("nano-moe-mla"), None, *shards, params, stage="lm")
    assert not any((tmp_path / "b").rglob("checkpoint-*"))  # before any training step
