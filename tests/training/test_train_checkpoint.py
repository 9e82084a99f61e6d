"""Checkpoints: pickle-free state trees, atomic writes, corruption detection and fallback,
keep-last-K, asynchronous saving identical to synchronous."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading

import numpy as np
import pytest
import torch

from tests.training.tiny_lm import TinyLM
from xoron_pipelines.training import (
    TensorBatchSource,
    TrainConfig,
    latest_valid_checkpoint,
    load_checkpoint,
    train,
    verify_checkpoint,
)
from xoron_pipelines.training import checkpoint as ckpt_mod
from xoron_pipelines.training.checkpoint import CorruptCheckpointError, Snapshot, decode_tree, encode_tree

SOURCE = TensorBatchSource(
    torch.randint(0, 31, (16, 8), generator=torch.Generator().manual_seed(0)), batch_size=2, seed=1
)


def _cfg(**kw):
    base = dict(
        max_steps=8,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        warmup_steps=2,
        save_steps=2,
        keep_last_k=3,
        deterministic=True,
        seed=3,
        logging_steps=1,
    )
    return TrainConfig(**{**base, **kw})


def _train(ckpt_dir, cfg=None, **kw):
    torch.manual_seed(0)
    model = TinyLM(dropout=0.2)
    result = train(model, SOURCE, cfg or _cfg(), ckpt_dir=ckpt_dir, progress=False, **kw)
    return model, result


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_state_tree_round_trip():
    tree = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
        "groups": [{"betas": (0.9, 0.95), "params": [0, 1], "lr": 1e-3, "name": None}],
        "numpy": ("MT19937", np.arange(4, dtype=np.uint32), 2, 0, 0.0),
        "floats": [math.inf, -0.0, 1 / 3],
        "flag": True,
    }
    tensors = {}
    encoded = encode_tree(tree, tensors)
    json.dumps(encoded)  # plain JSON
    back = decode_tree(json.loads(json.dumps(encoded)), tensors)
    assert back["groups"][0]["betas"] == (0.9, 0.95) and list(back["state"]) == [0]
    assert torch.equal(back["state"][0]["exp_avg"], tree["state"][0]["exp_avg"])
    assert back["numpy"][1].dtype == np.uint32 and back["numpy"][1].tolist() == [0, 1, 2, 3]
    assert back["floats"] == [math.inf, -0.0, 1 / 3] and back["flag"] is True
    tree["state"][0]["exp_avg"].add_(1)  # encoding took a snapshot
    assert not torch.equal(tensors["t.state.0.exp_avg"], tree["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="cannot store"):
        encode_tree({"x": object()}, {})


def _write(root, step, value=1.0):
    snap = Snapshot.take(step, {"w": torch.full((4,), value)}, trainer_state={"state": {"step": step}})
    return ckpt_mod.write_checkpoint(root, snap)


def test_corruption_is_detected(tmp_path):
    good = _write(tmp_path, 1)
    assert verify_checkpoint(good) is None and load_checkpoint(good).trees["trainer_state"]["state"]["step"] == 1
    truncated = _write(tmp_path, 2)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:-7])
    assert "model.safetensors has" in verify_checkpoint(truncated) and "truncated" in verify_checkpoint(truncated)
    flipped = _write(tmp_path, 3)
    raw = bytearray((flipped / "trainer_state.json").read_bytes())
    raw[-3] ^= 1
    (flipped / "trainer_state.json").write_bytes(bytes(raw))
    assert "does not match its sha256" in verify_checkpoint(flipped)
    no_manifest = _write(tmp_path, 4)
    (no_manifest / "manifest.json").unlink()
    assert verify_checkpoint(no_manifest) == "manifest.json is missing"
    bad_manifest = _write(tmp_path, 5)
    (bad_manifest / "manifest.json").write_text('{"files": ')
    assert "unreadable" in verify_checkpoint(bad_manifest)
    with pytest.raises(CorruptCheckpointError, match=str(bad_manifest)):
        load_checkpoint(bad_manifest)


def test_latest_valid_skips_corrupt_and_names_them(tmp_path, caplog):
    _write(tmp_path, 2)
    for step in (4, 6):
        path = _write(tmp_path, step)
        (path / "model.safetensors").write_bytes(b"")
    with caplog.at_level(logging.ERROR, logger="xoron_pipelines.training.checkpoint"):
        assert latest_valid_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert str(tmp_path / "checkpoint-6") in caplog.text and str(tmp_path / "checkpoint-4") in caplog.text
    assert latest_valid_checkpoint(tmp_path / "missing") is None


def test_rewrite_of_a_step_and_stale_temporaries(tmp_path):
    _write(tmp_path, 2, value=1.0)
    (tmp_path / ".tmp-checkpoint-4-deadbeef").mkdir()  # left by a killed writer
    _write(tmp_path, 2, value=5.0)  # same step again (e.g. after a corrupt one): replaced atomically
    assert load_checkpoint(tmp_path / "checkpoint-2").model["w"].tolist() == [5.0] * 4
    writer = ckpt_mod.CheckpointWriter(tmp_path, keep_last_k=2)
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_crash_with_corrupt_newest_checkpoint_falls_back(tmp_path, caplog):
    reference, _ = _train(tmp_path / "ref")

    def crash_at_step_7(step, metrics):
        if step == 7:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", on_log=crash_at_step_7)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    newest = tmp_path / "run" / "checkpoint-6"
    data = (newest / "optimizer.safetensors").read_bytes()
    (newest / "optimizer.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level(logging.INFO):
        model, result = _train(tmp_path / "run")
    assert f"corrupt checkpoint {newest}: optimizer.safetensors has" in caplog.text
    assert result.resumed_from == tmp_path / "run" / "checkpoint-4"
    assert _equal(model.state_dict(), reference.state_dict())  # resumed from 4: still bit-identical
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names[:3] == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]  # keep_last_k=3
    assert names[3].startswith("corrupt-checkpoint-6-")  # kept aside for inspection, never resumed from


def test_checkpoint_contents(tmp_path):
    model, result = _train(tmp_path, _cfg(max_steps=4, keep_last_k=1))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-4"]
    files = sorted(p.name for p in (tmp_path / "checkpoint-4").iterdir())
    assert files == [
        "manifest.json",
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng.json",
        "rng.safetensors",
        "trainer_state.json",
    ]
    manifest = json.loads((tmp_path / "checkpoint-4" / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "checkpoint-4" / name).read_bytes()).hexdigest() == meta["sha256"]
    loaded = load_checkpoint(tmp_path / "checkpoint-4")
    assert _equal(loaded.model, model.state_dict())
    state = loaded.trees["trainer_state"]
    assert state["state"]["step"] == 4 and state["state"]["micro_step"] == 8
    assert (state["state"]["epoch"], state["state"]["batch_index"]) == (1, 0)  # 8 micro-batches per epoch
    assert state["scheduler"]["last_epoch"] == 4 and state["config"]["max_steps"] == 4


def test_async_checkpoints_equal_sync_ones(tmp_path, monkeypatch):
    threads = []
    real_write = ckpt_mod.write_checkpoint

    def recording_write(root, snap):
        threads.append(threading.current_thread().name)
        return real_write(root, snap)

    monkeypatch.setattr(ckpt_mod, "write_checkpoint", recording_write)
    sync_model, _ = _train(tmp_path / "sync", _cfg(async_checkpointing=False))
    async_model, result = _train(tmp_path / "async", _cfg(async_checkpointing=True))
    assert threads[:4] == ["MainThread"] * 4 and all(t.startswith("checkpoint-writer") for t in threads[4:])
    assert result.last_checkpoint == tmp_path / "async" / "checkpoint-8"
    assert _equal(sync_model.state_dict(), async_model.state_dict())
    for step in (4, 6, 8):
        a, b = tmp_path / "sync" / f"checkpoint-{step}", tmp_path / "async" / f"checkpoint-{step}"
        for name in ("model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "rng.json"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), (step, name)
        sa, sb = (json.loads((d / "trainer_state.json").read_text()) for d in (a, b))
        assert sa["config"].pop("async_checkpointing") is False and sb["config"].pop("async_checkpointing") is True
        assert sa == sb


def test_async_write_errors_reach_the_caller(tmp_path, monkeypatch):
    def failing(tmp, snap):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "_write_files", failing)
    with pytest.raises(OSError, match="disk full"):
        _train(tmp_path, _cfg(async_checkpointing=True))
    assert not list(tmp_path.iterdir())  # the temp dir of the failed save is removed
