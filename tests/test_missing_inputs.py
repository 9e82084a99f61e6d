"""A pipeline whose inputs an earlier run has not produced yet stops before it starts, with one
paragraph naming each missing dataset, where it would be, the pipeline that produces it and the
command to run first (not Kedro's DatasetError and its --from-nodes hint)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import PROJECT_ROOT, copy_project, run_pipeline
from xoron_pipelines.cli import describe, is_user_error
from xoron_pipelines.hooks import MissingInputsError, all_pipelines, missing_inputs_message


def test_the_message_groups_the_inputs_by_the_pipeline_producing_them():
    pipelines = all_pipelines()
    one = missing_inputs_message(["evaluation"], {"preference.model": "data/06_models/preference"}, pipelines)
    assert one == (
        "The evaluation pipeline needs preference.model (data/06_models/preference), which the finetune "
        "pipeline produces; run `kedro run --pipelines finetune` first (or `kedro run` for everything)."
    )
    several = missing_inputs_message(
        ["export"],
        {"tokenizer": "data/05_model_input/tokenizer", "code.train_summary": "x.json", "language.train_summary": ""},
        pipelines,
    )
    assert several.startswith(
        "The export pipeline needs tokenizer (data/05_model_input/tokenizer), which the data_processing "
        "pipeline produces; code.train_summary (x.json) and language.train_summary, which the pretrain "
        "pipeline produces; run `kedro run --pipelines data_processing,pretrain` first"
    )
    error = MissingInputsError(one)
    assert is_user_error(error) and describe(error) == one


def test_a_run_with_missing_inputs_starts_nothing(tmp_path):
    """No node runs, no MLflow run is opened, the data lock and staging area are not left behind."""
    project = copy_project(tmp_path / "project")
    with pytest.raises(MissingInputsError) as err:
        run_pipeline(project, "export")
    message = str(err.value)
    assert message.startswith("The export pipeline needs ") and "`kedro run --pipelines " in message
    for name in ("tokenizer (data/05_model_input/tokenizer)", "packed_val", "preference.train_summary"):
        assert name in message
    assert "stage_models" not in message  # data/06_models exists: the export node judges it
    assert not (project / "data/.staging").exists() or not any((project / "data/.staging").iterdir())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_kedro_run_prints_the_paragraph_and_exits_1(tmp_path):
    project = copy_project(tmp_path / "project")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipelines", "evaluation"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stdout + out.stderr and "--from-nodes" not in out.stdout + out.stderr
    error = out.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(
        "Error: The evaluation pipeline needs code.model (data/06_models/code)"
    )
    assert (
        "preference.model (data/06_models/preference)" in error[0]
        and "which the finetune pipeline produces" in error[0]
    )
    assert error[0].endswith(
        "run `kedro run --pipelines data_processing,pretrain,finetune` first (or `kedro run` for everything)."
    )
    assert not (project / "data/01_raw/eval").exists()  # generate_offline_tasks did not run


def test_an_input_marked_optional_is_left_to_its_node(tmp_path):
    from kedro.io import DataCatalog
    from kedro.pipeline import Node, Pipeline

    from xoron_pipelines.hooks import MissingInputsHook

    def copy(x):
        return x

    pipe = Pipeline([Node(copy, "synth_manifest", "mine", name="copy")])  # synth writes synth_manifest
    entry = {"type": "json.JSONDataset", "filepath": str(tmp_path / "manifest.json")}
    with pytest.raises(MissingInputsError, match=r"^The mine pipeline needs synth_manifest \("):
        MissingInputsHook().before_pipeline_run(
            {"pipeline_names": ["mine"]}, pipe, DataCatalog.from_config({"synth_manifest": entry})
        )
    entry["metadata"] = {"xoron": {"optional_input": True}}
    MissingInputsHook().before_pipeline_run(
        {"pipeline_names": ["mine"]}, pipe, DataCatalog.from_config({"synth_manifest": entry})
    )
