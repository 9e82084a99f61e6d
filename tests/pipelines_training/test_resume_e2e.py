"""``kedro run --pipelines data_processing,pretrain`` killed with SIGKILL in the middle of the
language stage, then re-run with the very same command -- in place, and after the project was
moved to another directory: data_processing re-packs the data (new files, new modification
times), the stage resumes from its last checkpoint and ends bit-identical to an uninterrupted run.

Small run (stdlib corpus of a few KB, 32-token rows, 6 steps, the code stage off); the three
first runs go in parallel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import PROJECT_ROOT, copy_project

pytestmark = pytest.mark.slow

COMMAND = ["run", "--pipelines", "data_processing,pretrain"]
KILLER = Path(__file__).with_name("kill_kedro.py")
KILL_AFTER_STEP = 4
SETTINGS = {
    "parameters_data_processing.yml": {
        "data_processing.mix": "stdlib_only",
        "data_processing.stage_mixes": {},
        "data_processing.stdlib_corpus.max_bytes": 12_000,
        "data_processing.packing.max_seq_len": 32,
        "data_processing.dedup.near_dup": False,
        "data_processing.progress": False,
    },
    "parameters_pretrain.yml": {
        "pretrain.stages.language.data_mix": None,
        "pretrain.stages.language.train.max_steps": 6,
        "pretrain.stages.language.train.warmup_steps": 1,
        "pretrain.stages.language.train.batch_size": 4,
        "pretrain.stages.language.train.save_steps": 2,
        "pretrain.stages.language.train.eval_steps": None,
        "pretrain.stages.language.train.deterministic": True,
        "pretrain.stages.language.eval.max_batches": 1,
        "pretrain.stages.language.eval.batch_size": 2,
        "pretrain.stages.language.tracking.enabled": False,
        "pretrain.stages.code.enabled": False,
    },
    "parameters_model.yml": {"model.overrides": {"num_layers": 1}},
}


def _project(path: Path) -> Path:
    """A project copy with the small settings written into its conf/base files."""
    project = copy_project(path)
    for name, values in SETTINGS.items():
        conf = project / "conf" / "base" / name
        doc = yaml.safe_load(conf.read_text())
        for key, value in values.items():
            *parents, leaf = key.split(".")
            node = doc
            for part in parents:
                node = node[part]
            node[leaf] = value
        conf.write_text(yaml.safe_dump(doc, sort_keys=False))
    # data_processing takes synth's partitions as an input; the stdlib_only mix reads none of them
    (project / "data/01_raw/synth").mkdir(parents=True, exist_ok=True)
    (project / "data/01_raw/synth/chat.jsonl").write_text('{"messages": []}\n')
    return project


def _start(project: Path, kill: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), str(PROJECT_ROOT)])}
    args = [str(KILLER), str(KILL_AFTER_STEP)] if kill else ["-m", "kedro"]
    return subprocess.Popen(
        [sys.executable, *args, *COMMAND],
        cwd=project,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def _move(src: Path, dst: Path) -> Path:
    """Move a project (its conf/local/mlflow.yml names its database by absolute path: follow it)."""
    shutil.move(src, dst)
    mlflow_yml = dst / "conf" / "local" / "mlflow.yml"
    config = yaml.safe_load(mlflow_yml.read_text())
    config["server"]["mlflow_tracking_uri"] = f"sqlite:///{dst / 'mlflow.db'}"
    mlflow_yml.write_text(yaml.safe_dump(config, sort_keys=False))
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("resume_e2e")
    projects = {name: _project(root / name) for name in ("reference", "in_place", "moved")}
    first = {
        "reference": _start(projects["reference"], kill=False),
        "in_place": _start(projects["in_place"], kill=True),
        "moved": _start(projects["moved"], kill=True),
    }
    first = {name: _finish(proc) for name, proc in first.items()}
    projects["moved"] = _move(projects["moved"], root / "elsewhere" / "project")
    again = {name: _start(projects[name], kill=False) for name in ("in_place", "moved")}
    return {"projects": projects, "first": first, "again": {name: _finish(p) for name, p in again.items()}}


def _weights(project: Path) -> dict[str, torch.Tensor]:
    return load_file(str(project / "data/06_models/language/model.safetensors"))


def _summary(project: Path) -> dict:
    return json.loads((project / "data/08_reporting/training/language.json").read_text())


@pytest.mark.parametrize("name", ["in_place", "moved"])
def test_killed_default_workflow_resumes_bit_identical(runs, name):
    rc, out = runs["first"]["reference"]
    assert rc == 0, out[-5000:]
    rc, out = runs["first"][name]
    assert rc == -signal.SIGKILL, f"the run was not killed ({rc}):\n{out[-5000:]}"
    rc, out = runs["again"][name]
    assert rc == 0, out[-5000:]
    project, reference = runs["projects"][name], runs["projects"]["reference"]
    summary = _summary(project)
    fingerprint = summary["fingerprint"]
    assert fingerprint == _summary(reference)["fingerprint"]  # no path, no mtime in it
    assert summary["resumed_from"] == f"data/06_models/checkpoints/language/{fingerprint}/checkpoint-{KILL_AFTER_STEP}"
    assert summary["steps"] == 6
    expected, got = _weights(reference), _weights(project)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs after the resume ({name})"
