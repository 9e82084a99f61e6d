"""Scale-out from the Kedro stage node: ``distributed.nproc_per_node: 2`` launches 2 CPU workers
(gloo) from inside the node, and the stage ends with the weights of a 1-process stage that sees the
same rows per optimizer step (global micro-batch 4 over 2 processes == micro-batch 2 with doubled
accumulation). The MoE+MLA nano model exercises the all-reduced load-balancing bias; the SFT stage
adds LoRA with LoRA+ parameter groups (built in each worker) under FSDP2.
"""

from __future__ import annotations

import socket

import pytest
import torch

from tests.pipelines_training.stage_helpers import chat_rows, packed_shards, stage
from tests.training.finetune_helpers import chat_tokenizer, nano_model
from xoron_pipelines.datasets.parquet_shards import PackedMixes
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training import stage as stage_mod
from xoron_pipelines.training.schema import StageParams

TOLERANCE = 2e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(strategy: str) -> dict:
    return {"nproc_per_node": 2, "strategy": strategy, "backend": "gloo", "rdzv_endpoint": f"127.0.0.1:{_free_port()}"}


class _Logs:
    """Captures what the stage logs (the metrics its MLflow run would receive)."""

    def __init__(self, monkeypatch) -> None:
        self.entries: list[tuple[int, dict]] = []
        real = stage_mod.tracking.StageRecorder.log
        monkeypatch.setattr(
            stage_mod.tracking.StageRecorder,
            "log",
            lambda rec, step, m: (self.entries.append((step, dict(m))), real(rec, step, m))[1],
        )

    def take(self) -> list[tuple[int, dict]]:
        out, self.entries = self.entries, []
        return out


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage-ddp")
    shards = packed_shards(root / "train", rows=40), packed_shards(root / "val", rows=8, seed=1), PackedMixes(root)
    train = {"max_steps": 4, "learning_rate": 3e-3, "eval_steps": 2, "logging_steps": 1, "seed": 5}
    evaluation = {"max_batches": 2, "batch_size": 4}  # the same held-out rows for both batch sizes
    monkeypatch = pytest.MonkeyPatch()
    logs = _Logs(monkeypatch)
    out = {}
    try:
        single = stage(
            root / "ck-single", eval=evaluation, train={**train, "batch_size": 2, "gradient_accumulation_steps": 2}
        )
        out["single"] = (
            *nodes.train_causal_lm(nano_model("nano-moe-mla"), None, *shards, single, stage="lm"),
            logs.take(),
        )
        multi = stage(
            root / "ck-multi", eval=evaluation, train={**train, "batch_size": 4}, distributed=_two_processes("ddp")
        )
        out["ddp"] = (*nodes.train_causal_lm(nano_model("nano-moe-mla"), None, *shards, multi, stage="lm"), logs.take())
        # the same stage with one process resumes the finished 2-process checkpoints (distributed is not
        # part of the checkpoint fingerprint): it returns at once with the same weights
        again = stage(root / "ck-multi", eval=evaluation, train={**train, "batch_size": 4})
        out["again"] = (
            *nodes.train_causal_lm(nano_model("nano-moe-mla"), None, *shards, again, stage="lm"),
            logs.take(),
        )
    finally:
        monkeypatch.undo()
    out["root"] = root
    return out


def test_two_process_stage_matches_one_process_with_doubled_accumulation(lm_runs):
    (single, s_sum, _), (multi, m_sum, _) = lm_runs["single"], lm_runs["ddp"]
    assert m_sum["processes"] == 2 and s_sum["processes"] == 1
    assert m_sum["steps"] == s_sum["steps"] == 4
    assert m_sum["tokens_seen"] == s_sum["tokens_seen"] == 4 * 4 * 32
    assert _max_diff(single, nano_model("nano-moe-mla")) > 1e-3  # training really moved the weights
    diff = _max_diff(single, multi)
    print(f"stage ddp: max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff <= TOLERANCE
    assert m_sum["eval_loss"] == pytest.approx(s_sum["eval_loss"], rel=1e-5)


def test_worker_metrics_reach_the_stage_run_with_expert_load(lm_runs):
    single, multi = lm_runs["single"][2], lm_runs["ddp"][2]
    train_steps = lambda logs: [s for s, m in logs if "loss" in m]  # noqa: E731
    assert train_steps(multi) == train_steps(single) == [1, 2, 3, 4]
    for (_, m1), (_, m2) in zip([e for e in single if "loss" in e[1]], [e for e in multi if "loss" in e[1]]):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
        load = [k for k in m2 if k.startswith("moe/layer1/expert")]  # from the worker's model (stats_fn)
        assert len(load) == 4 and sum(m2[k] for k in load) == pytest.approx(1.0)
        assert 0 < m2["mfu"] < 1
    assert [s for s, m in multi if "eval_loss" in m] == [2, 4]


def test_one_process_resumes_the_finished_two_process_run(lm_runs):
    model, summary, _ = lm_runs["again"]
    assert summary["processes"] == 1
    assert summary["resumed_from"] is not None and summary["resumed_from"].endswith("checkpoint-4")
    assert _max_diff(model, lm_runs["ddp"][0]) == 0.0


def test_lora_plus_sft_stage_under_fsdp2_matches_one_process(tmp_path, monkeypatch):
    tok = chat_tokenizer()
    rows = chat_rows(24)
    lora = {
        "enabled": True,
        "r": 4,
        "alpha": 8,
        "use_lora_plus": True,
        "lora_plus_lr_ratio": 8.0,
        "train_lora_only": True,
        "dropout": 0.0,
    }  # dropout masks depend on the batch split
    common = dict(sources=["tools"], max_seq_len=48, lora=lora)
    train = {"max_steps": 3, "learning_rate": 5e-3, "seed": 2}
    single = stage(tmp_path / "one", **common, train={**train, "batch_size": 2, "gradient_accumulation_steps": 2})
    multi = stage(tmp_path / "two", **common, train={**train, "batch_size": 4}, distributed=_two_processes("fsdp2"))
    m1, s1 = nodes.train_sft(nano_model(vocab_size=512), tok, {"tools": rows}, single, stage="sft")
    m2, s2 = nodes.train_sft(nano_model(vocab_size=512), tok, {"tools": rows}, multi, stage="sft")
    assert s2["processes"] == 2 and s2["steps"] == s1["steps"] == 3
    assert s2["trainable_params"] == s1["trainable_params"] < s1["total_params"] / 5  # adapters only
    assert _max_diff(m1, nano_model(vocab_size=512)) > 1e-3  # merged adapters changed the weights
    diff = _max_diff(m1, m2)
    print(f"stage fsdp2 + LoRA+: max |w_2proc - w_1proc| = {diff:.3g}")
    # chat examples are padded to the longest of their micro-batch: 2 rows alone vs a 4-row batch split
    # in two give other matmul shapes, hence float differences that Adam's normalisation enlarges
    assert diff <= 10 * TOLERANCE
    assert s2["lora_adapter"] == s1["lora_adapter"] == "sft.lora_adapter"


def test_other_nodes_return_node_zeros_model_and_log_nothing(tmp_path, monkeypatch):
    """``node_rank > 0``: the launch returns nothing there; the node reads the trained weights from the
    shared checkpoint and opens no MLflow run (node 0 does the tracking)."""
    shards = (
        packed_shards(tmp_path / "train", rows=16),
        packed_shards(tmp_path / "val", rows=4, seed=1),
        PackedMixes(tmp_path),
    )

    def node_one_launch(factory, source, cfg, settings, *, ckpt_dir, **_):
        assert settings.node_rank == 1 and settings.world_size == 2
        stage_mod.train(factory(), source, cfg, ckpt_dir=ckpt_dir, progress=False)  # node 0's workers, in short
        return None

    monkeypatch.setattr(stage_mod, "distributed_train", node_one_launch)
    opened = []
    monkeypatch.setattr(stage_mod.tracking, "stage_run", lambda *a, **k: opened.append(a) or _null())
    params = stage(
        tmp_path / "ck",
        train={"max_steps": 2, "batch_size": 2},
        distributed={"nnodes": 2, "node_rank": 1, "rdzv_endpoint": "node0.example:29500"},
        tracking={"enabled": True},
    )
    model, summary = nodes.train_causal_lm(nano_model(), None, *shards, params, stage="lm")
    assert summary["node_rank"] == 1 and "node 0" in summary["note"]
    assert opened == [("lm", False)]  # tracking is off on this node
    from safetensors.torch import load_file

    ckpt = next((tmp_path / "ck" / "lm").glob("*/checkpoint-2"))
    saved = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def _null():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"train": {"batch_size": 3}, "distributed": {"nproc_per_node": 2}}, "multiple of 2"),
        ({"train": {"batch_size": 4}, "distributed": {"nproc_per_node": 2, "strategy": "zero"}}, "strategy"),
        ({"train": {"batch_size": 4}, "distributed": {"nnodes": 2, "node_rank": 2}}, "node_rank"),
    ],
)
def test_bad_distributed_settings_fail_naming_the_key(bad, message, tmp_path):
    params = stage(tmp_path, **{k: v for k, v in bad.items() if k != "train"}, train=bad["train"])
    with pytest.raises(ValueError, match=message):
        StageParams.model_validate(params)


def test_two_nodes_return_the_same_model_as_one_process(tmp_path):
    """Two real "nodes" (separate processes, static rendezvous on this machine, one worker each,
    checkpoint_dir shared): both return the weights of the 1-process run, node 0 the full summary."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    shards = packed_shards(tmp_path / "train", rows=24), packed_shards(tmp_path / "val", rows=8, seed=1)
    train = {"max_steps": 3, "learning_rate": 3e-3, "logging_steps": 1, "seed": 4}
    evaluation = {"max_batches": 2, "batch_size": 4}
    single = stage(
        tmp_path / "ck-single", eval=evaluation, train={**train, "batch_size": 2, "gradient_accumulation_steps": 2}
    )
    reference, _ = nodes.train_causal_lm(
        nano_model("nano-moe-mla"), None, *shards, PackedMixes(tmp_path), single, stage="lm"
    )
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    procs = []
    for rank in (0, 1):
        args = {
            "train": str(shards[0].path),
            "val": str(shards[1].path),
            "ckpt": str(tmp_path / "ck-shared"),
            "preset": "nano-moe-mla",
            "train_params": {**train, "batch_size": 4},
            "eval": evaluation,
            "out": str(tmp_path / f"node{rank}"),
            "distributed": {
                "nnodes": 2,
                "node_rank": rank,
                "nproc_per_node": 1,
                "rdzv_backend": "static",
                "rdzv_endpoint": endpoint,
                "backend": "gloo",
                "timeout": 120,
            },
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.pipelines_training.node_main", json.dumps(args)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    summaries = [json.loads((tmp_path / f"node{r}.json").read_text()) for r in (0, 1)]
    assert summaries[0]["processes"] == 2 and summaries[0]["steps"] == 3
    assert summaries[1]["node_rank"] == 1 and "steps" not in summaries[1]
    expected = reference.state_dict()
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"node{rank}.safetensors"))
        diff = max(float((got[k] - expected[k]).abs().max()) for k in expected)
        print(f"node {rank}: max |w_2nodes - w_1proc| = {diff:.3g}")
        assert diff <= TOLERANCE
    assert sorted(
        p.name for p in next((tmp_path / "ck-shared" / "lm").iterdir()).iterdir() if p.name.startswith("start_model")
    ) == ["start_model.node0", "start_model.node1"]
