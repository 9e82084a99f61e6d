"""MLflow runs left RUNNING by a killed process are ended as KILLED by the next `kedro run`;
runs of live processes, of other hosts or without an owner are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import yaml

from tests.helpers import PROJECT_ROOT, copy_project, run_pipeline
from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES
from xoron_pipelines.tracking import HOST_TAG, PID_START_TAG, PID_TAG, owner_alive, process_tags

EXPERIMENT = "xoron_pipelines"  # conf/local/mlflow.yml tracking.experiment.name


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_owner_alive_tells_live_dead_reused_and_unknown_processes():
    mine = process_tags()
    assert mine[PID_TAG] == str(os.getpid()) and mine[PID_START_TAG]
    assert owner_alive(mine) is True
    assert owner_alive(process_tags(_dead_pid())) is False
    assert owner_alive({**mine, PID_START_TAG: "1"}) is False  # the pid now belongs to another process
    assert owner_alive({**mine, HOST_TAG: "another-node"}) is None  # cannot be checked from here
    assert owner_alive({}) is None


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import mlflow
    from xoron_pipelines.tracking import process_tags
    mlflow.set_tracking_uri(sys.argv[1])
    mlflow.set_experiment(sys.argv[2])
    run = mlflow.start_run(run_name="killed", tags=process_tags())
    print(run.info.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_next_kedro_run_marks_runs_of_killed_processes(tmp_path):
    from mlflow.tracking import MlflowClient

    project = copy_project(tmp_path / "project")
    uri = yaml.safe_load((project / "conf/local/mlflow.yml").read_text())["server"]["mlflow_tracking_uri"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, uri, EXPERIMENT], capture_output=True, text=True, env=env, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    killed_id = killed.stdout.split()[0]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    live = client.create_run(experiment, tags=process_tags(), run_name="live").info.run_id
    remote = client.create_run(
        experiment, tags={**process_tags(_dead_pid()), HOST_TAG: "another-node"}, run_name="remote"
    ).info.run_id
    untagged = client.create_run(experiment, run_name="untagged").info.run_id
    assert client.get_run(killed_id).info.status == "RUNNING"

    counts = {t: 0 for t in SYNTH_TYPES} | {"fim": 1}
    run_pipeline(project, "synth", {"synth.counts": counts})

    status = {rid: client.get_run(rid).info.status for rid in (killed_id, live, remote, untagged)}
    assert status == {killed_id: "KILLED", live: "RUNNING", remote: "RUNNING", untagged: "RUNNING"}
    [this] = [r for r in client.search_runs([experiment]) if r.info.run_name == "synth"]
    assert this.info.status == "FINISHED" and this.data.tags[PID_TAG] == str(os.getpid())
