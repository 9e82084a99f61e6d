"""Where a stage trains: ``device`` (explicit cpu == the default auto on this CPU machine, bit for
bit), the resolved runtime in the log and in MLflow, the MFU denominator (``tracking.peak_flops``),
and the trained model handed back on the CPU in fp32. Nothing here runs on a GPU; the GPU
resolution is tested with CUDA mocked (``Runtime.of``)."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.helpers import fresh_tracking_store
from tests.pipelines_training.stage_helpers import packed_shards, stage
from tests.training.finetune_helpers import nano_model
from xoron_pipelines.datasets.parquet_shards import PackedMixes
from xoron_pipelines.device import CPU_PEAK_FLOPS
from xoron_pipelines.model.params_count import count_parameters
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training import stage as stage_mod
from xoron_pipelines.training.schema import StageParams


@pytest.fixture()
def shards(tmp_path):
    return packed_shards(tmp_path / "train", rows=24), packed_shards(tmp_path / "val", rows=8, seed=1)


def _lm(model, shards, params):
    mixes = PackedMixes(shards[0].path.parent / "no-mixes")
    return nodes.train_causal_lm(model, None, *shards, mixes, params, stage="language")


@pytest.fixture()
def logged(monkeypatch):
    """Every metrics dict the stage records (what goes to MLflow), in order."""
    seen: list[dict] = []
    real = stage_mod.tracking.StageRecorder.log
    monkeypatch.setattr(
        stage_mod.tracking.StageRecorder, "log", lambda self, step, m: (seen.append(dict(m)), real(self, step, m))[1]
    )
    return seen


def test_explicit_cpu_equals_the_default_and_the_model_comes_back_on_the_cpu_in_fp32(tmp_path, shards, caplog):
    weights, prints = {}, {}
    for device in (None, "cpu"):
        params = stage(tmp_path / f"ck-{device}", train={"max_steps": 3}, **({"device": device} if device else {}))
        assert StageParams.model_validate(params).device == (device or "auto")
        with caplog.at_level(logging.INFO, logger="xoron_pipelines.training.stage"):
            model, summary = _lm(nano_model(), shards, params)
        weights[device], prints[device] = model.state_dict(), summary["fingerprint"]
        assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.float32)}
    assert weights[None].keys() == weights["cpu"].keys()
    assert all(torch.equal(weights[None][k], weights["cpu"][k]) for k in weights[None])
    assert prints[None] == prints["cpu"]  # device is not part of the fingerprint: checkpoints are portable
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage language: device")]
    assert lines == ["stage language: device cpu, precision fp32, compile off, kernels torch"] * 2


def test_the_runtime_goes_to_mlflow(tmp_path, shards):
    params = stage(tmp_path / "ck", train={"max_steps": 1})
    params["tracking"] = {"enabled": True, "log_model": False, "log_tokenizer": False, "plots": False}
    with fresh_tracking_store(tmp_path) as client:
        _, summary = _lm(nano_model(), shards, params)
        logged = client.get_run(summary["mlflow_run_id"]).data.params
    runtime = {k: v for k, v in logged.items() if k.startswith("runtime.")}
    assert runtime == {
        "runtime.device": "cpu",
        "runtime.precision": "fp32",
        "runtime.compile": "False",
        "runtime.kernels": "torch",
        "runtime.peak_flops": str(CPU_PEAK_FLOPS),
    }
    assert logged["device"] == "auto" and logged["train.precision"] == "auto" and logged["train.compile"] == "auto"


def test_mfu_uses_the_resolved_peak_or_the_number_given(tmp_path, shards, logged, monkeypatch):
    model = nano_model()
    active = count_parameters(model.config)["active_per_token"]
    for peak in ("auto", 1.0e12):
        logged.clear()
        params = stage(tmp_path / f"ck{peak}", train={"max_steps": 2})
        params["tracking"] = {"enabled": False, "peak_flops": peak}
        _lm(nano_model(), shards, params)
        rows = [m for m in logged if "tokens_per_s" in m]
        assert len(rows) == 2
        for m in rows:
            want = 6.0 * active * m["tokens_per_s"] / (CPU_PEAK_FLOPS if peak == "auto" else peak)
            assert m["mfu"] == pytest.approx(want, rel=1e-12)
    logged.clear()
    monkeypatch.setattr(stage_mod, "peak_flops", lambda *a: None)  # a GPU the table does not know
    _lm(nano_model(), shards, stage(tmp_path / "ck-unknown", train={"max_steps": 2}))
    rows = [m for m in logged if "tokens_per_s" in m]
    assert rows and not any("mfu" in m for m in rows)  # no MFU rather than a made-up one


def test_runtime_resolution_on_a_mocked_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr("xoron_pipelines.kernels.dispatch.triton_available", lambda: True)
    config = nano_model().config
    params = StageParams.model_validate(stage("ck"))
    runtime = stage_mod.Runtime.of("language", params, config)
    assert runtime.describe() == "device cuda:0 (NVIDIA H100 80GB HBM3), precision bf16, compile on, kernels triton"
    assert runtime.peak_flops == 989.5e12
    explicit = StageParams.model_validate(stage("ck", device="cpu", train={"precision": "fp32", "compile": False}))
    assert stage_mod.Runtime.of("language", explicit, config).describe() == (
        "device cpu, precision fp32, compile off, kernels torch"
    )
    config.kernels = "torch"
    assert stage_mod.Runtime.of("language", params, config).kernels == "torch"
    fixed = StageParams.model_validate({**stage("ck"), "tracking": {"enabled": False, "peak_flops": 5e14}})
    assert stage_mod.Runtime.of("language", fixed, config).peak_flops == 5e14
    assert stage_mod.device_key("language") == "pretrain.stages.language.device"
    assert stage_mod.device_key("preference") == "finetune.stages.preference.device"
