"""The console and MLflow conventions on a tiny trained project (synth -> data_processing ->
pretrain + finetune, a few steps each, once per module): no warning of the project's own, a loss
curve of at least 10 points per stage (every step when shorter), system metrics on the stage runs,
the experiment tagged as model training; ``python -m xoron_pipelines chat`` and ``status``."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import PROJECT_ROOT, copy_project, fresh_tracking_store, run_pipeline
from xoron_pipelines import console, tracking
from xoron_pipelines.cli import chat, chat_reply, status
from xoron_pipelines.training.stage import logging_interval

pytestmark = pytest.mark.slow

SRC = PROJECT_ROOT / "src" / "xoron_pipelines"

TRAIN = {
    "model": {"preset": "nano", "overrides": {"num_layers": 1}},
    "pretrain.stages.language.train.max_steps": 20,
    "pretrain.stages.language.train.warmup_steps": 2,
    "pretrain.stages.language.train.logging_steps": 5,
    "pretrain.stages.language.train.batch_size": 4,
    "pretrain.stages.language.train.eval_steps": None,
    "pretrain.stages.language.eval.max_batches": 1,
    "pretrain.stages.language.eval.batch_size": 2,
    "pretrain.stages.language.tracking": {"system_metrics_interval_s": 0.5, "log_model": False},
    "pretrain.stages.code.train.max_steps": 2,
    "pretrain.stages.code.train.warmup_steps": 1,
    "pretrain.stages.code.eval.max_batches": 1,
    "pretrain.stages.code.eval.batch_size": 2,
    "finetune.stages.tools.train.max_steps": 3,
    "finetune.stages.tools.train.batch_size": 2,
    "finetune.stages.tools.train.gradient_accumulation_steps": 1,
    "finetune.stages.tools.max_samples": 12,
    "finetune.stages.tools.eval.max_batches": 1,
    "finetune.stages.preference.train.max_steps": 2,
    "finetune.stages.preference.train.warmup_steps": 1,
    "finetune.stages.preference.train.batch_size": 2,
    "finetune.stages.preference.train.gradient_accumulation_steps": 1,
    "finetune.stages.preference.eval.max_batches": 1,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[warnings.WarningMessage]]:
    """The project after the runs, and every Python warning the runs issued past the project's
    warning policy (Kedro's dotted-name warning re-armed: it fires once per process)."""
    from kedro.pipeline import Node

    from xoron_pipelines.synth import SYNTH_TYPES

    project = copy_project(tmp_path_factory.mktemp("console") / "project")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.install()
        Node.__dotted_dataset_name_warned__ = False
        run_pipeline(project, "synth", {"synth.counts": {k: 6 for k in SYNTH_TYPES}})
        run_pipeline(
            project,
            "data_processing",
            {
                "data_processing.stdlib_corpus.max_bytes": 60_000,
                "data_processing.packing.max_seq_len": 64,
                "data_processing.progress": False,
            },
        )
        run_pipeline(project, "training", TRAIN)
    return project, list(caught)


def _client(project: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def _stage_runs(project: Path) -> dict:
    client = _client(project)
    experiment = client.get_experiment_by_name("xoron_pipelines")
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags["xoron.stage"]: run for run in runs if "xoron.stage" in run.data.tags}


def test_the_runs_issue_no_warning_from_the_project(trained):
    _, caught = trained
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if Path(w.filename).is_relative_to(SRC)]
    assert not ours, ours


def test_the_warning_policy_hides_kedros_namespace_warning_only():
    """The finetune stages read code.model (another namespace's dataset): Kedro warns; with the
    policy installed it does not, and other warnings still show."""
    from kedro.pipeline import Node

    from xoron_pipelines.pipelines.training.pipeline import group_pipeline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Node.__dotted_dataset_name_warned__ = False
        group_pipeline("finetune", "code.model")
        assert any("contain '.'" in str(w.message) for w in caught)
        caught.clear()
        console.install()
        Node.__dotted_dataset_name_warned__ = False
        group_pipeline("finetune", "code.model")
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]


@pytest.mark.parametrize(("logging_steps", "steps", "interval"), [(5, 20, 2), (10, 200, 10), (5, 4, 1), (5, 1, 1)])
def test_the_logging_interval_gives_ten_points_or_every_step(logging_steps, steps, interval):
    assert logging_interval(logging_steps, steps) == interval
    assert len(range(interval, steps + 1, interval)) >= min(10, steps)


def test_every_stage_logs_a_loss_curve_worth_the_name(trained):
    project, _ = trained
    client = _client(project)
    runs = _stage_runs(project)
    steps = {"language": 20, "code": 2, "tools": 3, "preference": 2}
    for stage, n in steps.items():
        points = {m.step for m in client.get_metric_history(runs[stage].info.run_id, "loss")}
        assert len(points) >= min(10, n), (stage, sorted(points))
    # language: 20 steps with logging_steps 5 -> every 2 steps
    assert {2, 4, 20} <= {m.step for m in client.get_metric_history(runs["language"].info.run_id, "loss")}


def test_stage_runs_carry_system_metrics_and_the_experiment_is_model_training(trained):
    project, _ = trained
    runs = _stage_runs(project)
    metrics = runs["language"].data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    client = _client(project)
    experiment = client.get_experiment_by_name("xoron_pipelines")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING
    parent = client.get_run(runs["language"].data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "training"


def test_run_names_and_the_experiment_kind_of_an_older_experiment(tmp_path):
    assert tracking.run_name(["__default__"]) == "default"
    assert tracking.run_name(["data_processing", "pretrain"]) == "data_processing+pretrain"
    import mlflow

    with fresh_tracking_store(tmp_path) as client:
        experiment = client.create_experiment("older")
        assert tracking.tag_experiment_kind(experiment)
        assert client.get_experiment(experiment).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING
        client.set_experiment_tag(experiment, tracking.EXPERIMENT_KIND_TAG, "genai_development")
        assert not tracking.tag_experiment_kind(experiment)  # a kind chosen in the UI is kept
        with mlflow.start_run(experiment_id=experiment, run_name="__default__") as run:
            assert not tracking.rename_active_run("default", unless_named="configured")
            assert tracking.rename_active_run("default", unless_named="__default__")
        assert client.get_run(run.info.run_id).info.run_name == "default"


def test_chat_answers_each_stdin_line_as_our_greedy_decoding_does(trained):
    from xoron_pipelines.evaluation.generation_tasks import truncate_at
    from xoron_pipelines.evaluation.lm import generate_texts
    from xoron_pipelines.tokens import CHAT_ROLES, render_chat, strip_hidden_tokens

    project, _ = trained
    result = CliRunner().invoke(
        chat, ["--stage", "tools", "--project", str(project), "--max-new-tokens", "8"], input="hello\n\nwhat is 2+2?\n"
    )
    assert result.exit_code == 0, result.output
    replies = result.stdout.split("\n")[:-1]
    assert len(replies) == 2  # one per non-empty line

    from xoron_pipelines.datasets.model import XoronModelDataset
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset

    model = XoronModelDataset(str(project / "data/06_models/tools")).load()
    tokenizer = HFTokenizerDataset(str(project / "data/05_model_input/tokenizer")).load()
    prompt = render_chat([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    (raw,) = generate_texts(model, tokenizer, [prompt], max_new_tokens=8, batch_size=1)
    stops = (CHAT_ROLES["assistant"][1], CHAT_ROLES["user"][0])
    assert replies[0] == strip_hidden_tokens(truncate_at(raw, stops))
    conversation = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": replies[0]}]
    second = chat_reply(model, tokenizer, [*conversation, {"role": "user", "content": "what is 2+2?"}], 8, 0.0, 0)
    assert replies[1] == second  # the second turn sees the first


def test_chat_on_an_export_directory_and_its_errors(trained, tmp_path):
    project, _ = trained
    from xoron_pipelines.datasets.model import XoronModelDataset
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset

    export = tmp_path / "hf"
    XoronModelDataset(str(project / "data/06_models/tools")).load().save_pretrained(export)
    HFTokenizerDataset(str(project / "data/05_model_input/tokenizer")).load().save_pretrained(export)
    runner = CliRunner()
    by_export = runner.invoke(chat, ["--export", str(export), "--max-new-tokens", "8"], input="hello\n")
    by_stage = runner.invoke(
        chat, ["--stage", "tools", "--project", str(project), "--max-new-tokens", "8"], input="hello\n"
    )
    assert by_export.exit_code == 0 and by_export.stdout == by_stage.stdout, by_export.output
    assert len(by_stage.stdout.splitlines()) == 1
    assert runner.invoke(chat, ["--project", str(project)]).exit_code == 2  # neither --stage nor --export
    unknown = runner.invoke(chat, ["--stage", "tool", "--project", str(project)])
    assert unknown.exit_code == 2 and "choose among language, code, tools, preference" in unknown.output
    untrained = runner.invoke(chat, ["--stage", "tools", "--project", str(copy_project(tmp_path / "empty"))])
    assert untrained.exit_code == 1 and "no trained model yet" in untrained.output


def test_status_lists_stages_checkpoints_and_runs(trained):
    project, _ = trained
    result = CliRunner().invoke(status, ["--project", str(project)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    stage_table = lines[: lines.index("")]
    rows = {line.split()[0]: line.split() for line in stage_table[2:]}
    assert list(rows) == ["language", "code", "tools", "preference"]
    summary = _stage_runs(project)
    assert rows["language"][1] == "data/06_models/language" and rows["language"][2] == "20"
    assert rows["tools"][2] == "3"
    import json

    loss = json.loads((project / "data/08_reporting/training/language.json").read_text())["eval_loss"]
    assert rows["language"][3] == f"{loss:.3f}"
    assert rows["language"][5] == "1" and rows["language"][6].endswith("@20")  # one configuration, newest step 20
    assert any(line.startswith("training ") and "FINISHED" in line for line in lines)
    assert sum(summary[s].info.run_id in result.output for s in summary) == 4


def test_python_m_xoron_pipelines_routes_status_beside_run(trained):
    project, _ = trained
    env = {**__import__("os").environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-m", "xoron_pipelines", "status", "--runs", "1"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["stage", "model", "steps"])
    assert lines[header + 2].split()[:3] == ["language", "data/06_models/language", "20"]
    elsewhere = subprocess.run(
        [sys.executable, "-m", "xoron_pipelines", "status"], cwd=project.parent, env=env, capture_output=True, text=True
    )
    assert elsewhere.returncode == 2 and "is not a Kedro project (no conf/base)" in elsewhere.stderr


def test_artefacts_of_earlier_runs_resolve_after_the_project_moved(tmp_path):
    """A run's artefacts (under <project>/mlruns) resolve from the moved project after its next
    kedro run, and that run's artefacts go to the new place."""
    import shutil

    import yaml
    from mlflow.tracking import MlflowClient

    from xoron_pipelines.synth import SYNTH_TYPES

    tiny = {"synth.counts": {k: (1 if k == "tool_call" else 0) for k in SYNTH_TYPES}}
    first = copy_project(tmp_path / "first")
    run_pipeline(first, "synth", tiny)
    client = MlflowClient(tracking_uri=f"sqlite:///{first / 'mlflow.db'}")
    (earlier,) = client.search_runs([client.get_experiment_by_name("xoron_pipelines").experiment_id])
    client.log_text(earlier.info.run_id, "kept", "note.txt")
    assert client.get_run(earlier.info.run_id).info.artifact_uri.startswith(str(first / "mlruns"))

    moved = tmp_path / "moved"
    shutil.move(first, moved)
    mlflow_yml = moved / "conf/local/mlflow.yml"  # the tests' absolute URI; a relative one moves along
    config = yaml.safe_load(mlflow_yml.read_text())
    config["server"]["mlflow_tracking_uri"] = f"sqlite:///{moved / 'mlflow.db'}"
    mlflow_yml.write_text(yaml.safe_dump(config, sort_keys=False))
    run_pipeline(moved, "synth", tiny)

    client = MlflowClient(tracking_uri=f"sqlite:///{moved / 'mlflow.db'}")
    note = client.download_artifacts(earlier.info.run_id, "note.txt", str(tmp_path))
    assert Path(note).read_text() == "kept"
    runs = client.search_runs([client.get_experiment_by_name("xoron_pipelines").experiment_id])
    assert len(runs) == 2 and all(r.info.artifact_uri.startswith(str(moved / "mlruns")) for r in runs)
