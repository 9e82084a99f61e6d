"""synth -> data_processing -> pretrain + finetune through Kedro on a small corpus, once per module:
the language stage must beat the unigram baseline, every stage is a nested MLflow run with its
params, step metrics and artefacts, a re-run resumes, and the walkthrough notebook executes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from tests.helpers import copy_project, run_pipeline

pytestmark = pytest.mark.slow

STAGES = ["language", "code", "tools", "preference"]
MODEL = {
    "model": {
        "preset": "nano-gqa-moe",
        "overrides": {"num_layers": 2, "attention_chunk_size": None, "sliding_window": None},
    }
}
SMALL = {
    "pretrain.stages.language.train.max_steps": 150,
    "pretrain.stages.language.train.batch_size": 16,
    "pretrain.stages.language.train.eval_steps": 75,
    "pretrain.stages.language.eval.max_batches": 4,
    "pretrain.stages.code.train.max_steps": 3,
    "pretrain.stages.code.train.warmup_steps": 2,  # warm-up must be shorter than the run
    "pretrain.stages.code.eval.max_batches": 2,
    "finetune.stages.tools.train.max_steps": 2,
    "finetune.stages.tools.train.batch_size": 4,
    "finetune.stages.tools.train.gradient_accumulation_steps": 1,
    "finetune.stages.tools.max_samples": 40,
    "finetune.stages.tools.eval.max_batches": 1,
    "finetune.stages.preference.train.max_steps": 2,
    "finetune.stages.preference.train.warmup_steps": 1,
    "finetune.stages.preference.train.batch_size": 2,
    "finetune.stages.preference.train.gradient_accumulation_steps": 1,
    "finetune.stages.preference.eval.max_batches": 1,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES

    project = copy_project(tmp_path_factory.mktemp("training") / "project")
    run_pipeline(project, "synth", {"synth.counts": {k: 15 for k in SYNTH_TYPES}})
    run_pipeline(
        project,
        "data_processing",
        {
            "data_processing.stdlib_corpus.max_bytes": 150_000,
            "data_processing.packing.max_seq_len": 64,
            "data_processing.progress": False,
        },
    )
    run_pipeline(project, "training", {**MODEL, **SMALL})
    return project


def _unigram_entropy(project: Path, shards: str) -> float:
    table = pads.dataset(str(project / "data/05_model_input" / shards), format="parquet").to_table()
    counts: dict[int, int] = {}
    for ids, length in zip(table.column("input_ids").to_pylist(), table.column("length").to_pylist()):
        for token, n in zip(*np.unique(ids[:length], return_counts=True)):
            counts[int(token)] = counts.get(int(token), 0) + int(n)
    p = np.array(list(counts.values()), dtype=float)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


def _summary(project: Path, stage: str) -> dict:
    return json.loads((project / f"data/08_reporting/training/{stage}.json").read_text())


def test_language_stage_beats_the_unigram_baseline(trained):
    summary = _summary(trained, "language")
    assert summary["data_mix"] == "language"  # conf/base: each pretrain stage trains on its stage mix
    assert _summary(trained, "code")["data_mix"] == "code"
    baseline = _unigram_entropy(trained, "packed_mixes/language/train")
    assert summary["unigram_entropy"] == pytest.approx(baseline, rel=1e-6)
    assert _unigram_entropy(trained, "packed/train") != pytest.approx(baseline, rel=1e-3)  # another token mix
    assert summary["eval_loss"] < baseline - 0.5, (summary["eval_loss"], baseline)


def test_every_stage_writes_a_model_the_next_one_starts_from(trained):
    from xoron_pipelines.datasets.model import XoronModelDataset

    states = [XoronModelDataset(str(trained / "data/06_models" / s)).load().state_dict() for s in STAGES]
    for before, after in zip(states, states[1:]):
        assert any(not np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert _summary(trained, "tools")["train_examples"] == 40
    assert (trained / "data/08_reporting/training/finetune_summary.csv").read_text().count("\n") == 3


def test_stage_runs_are_nested_under_the_kedro_run(trained):
    import yaml
    from mlflow.tracking import MlflowClient

    uri = yaml.safe_load((trained / "conf/local/mlflow.yml").read_text())["server"]["mlflow_tracking_uri"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("xoron_pipelines")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "training")
    children = {
        r.data.tags["xoron.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == sorted(STAGES)
    lang = children["language"]
    assert lang.data.params["train.learning_rate"] == "0.003" and lang.data.params["train.max_steps"] == "150"
    assert children["preference"].data.params["beta"] == "0.1"
    history = client.get_metric_history(lang.info.run_id, "loss")
    assert len(history) > 1 and history[-1].value < history[0].value
    for name in (
        "lr",
        "grad_norm",
        "tokens_per_s",
        "mfu",
        "eval_loss",
        "moe/layer0/expert0",
        "moe/layer0/max_over_mean",
    ):
        assert client.get_metric_history(lang.info.run_id, name), name
    assert client.get_metric_history(children["preference"].info.run_id, "train_reward_margins")
    artifacts = {a.path for a in client.list_artifacts(lang.info.run_id)}
    assert {"plots", "model", "tokenizer", "summary.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(lang.info.run_id, "plots")}
    assert plots == {"plots/loss_curve.png", "plots/expert_load.png"}
    local = client.download_artifacts(lang.info.run_id, "plots/loss_curve.png")
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model_files = {Path(a.path).name for a in client.list_artifacts(lang.info.run_id, "model")}
    assert {"config.json", "model.safetensors"} <= model_files


def test_walkthrough_notebook_executes(trained, project_root):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(project_root / "notebooks/walkthrough.ipynb", as_version=4)
    env_before = os.environ.get("XORON_PROJECT")
    os.environ["XORON_PROJECT"] = str(trained)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(trained)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("XORON_PROJECT", None)
        else:
            os.environ["XORON_PROJECT"] = env_before
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "stage 'preference'" in outputs and "logged steps" in outputs


def test_rerun_resumes_instead_of_retraining(trained):
    run_pipeline(trained, "pretrain", {**MODEL, **SMALL})
    summary = _summary(trained, "language")
    assert summary["resumed_from"] is not None and summary["steps"] == 150
