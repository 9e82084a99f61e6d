"""The project's data lock: readers share, writers exclude, a second run waits then stops naming
the lock file and the holder, a killed holder's lock is taken over; the hook wires it into runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xoron_pipelines.project_lock import LOCK_PATH, ProjectLock, ProjectLockTimeout

SRC = Path(__file__).resolve().parents[2] / "src"

HOLDER = """
import sys, time
from xoron_pipelines.project_lock import ProjectLock
lock = ProjectLock(sys.argv[1], sys.argv[2], 0, "holder run").acquire()
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _holder(lock_path: Path, mode: str = "exclusive", hold_s: float = 60) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path), mode, str(hold_s)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_stops_naming_the_lock_file_and_the_holder_pid(tmp_path):
    path = tmp_path / "data" / ".data_processing.lock"
    holder = _holder(path)
    try:
        for mode in ("exclusive", "shared"):
            started = time.monotonic()
            with pytest.raises(ProjectLockTimeout) as info:
                ProjectLock(path, mode, 0.4, "kedro run --pipelines data_processing").acquire()
            assert 0.4 <= time.monotonic() - started < 5
            message = str(info.value)
            assert str(path) in message and f"pid {holder.pid} " in message and "holder run" in message
            assert "lock_timeout_s" in message
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holders_lock_is_taken_over_at_once(tmp_path):
    path = tmp_path / ".lock"
    holder = _holder(path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with ProjectLock(path, "exclusive", 0, "next run") as lock:
        assert time.monotonic() - started < 1
        assert lock.holders() == []  # the dead holder's record is gone
    assert not any(lock.holders_dir.iterdir())  # ours removed on release


def test_a_waiting_run_logs_then_proceeds_when_the_holder_ends(tmp_path, caplog):
    path = tmp_path / ".lock"
    holder = _holder(path, hold_s=1.0)
    try:
        with caplog.at_level("INFO", logger="xoron_pipelines.project_lock"):
            with ProjectLock(path, "shared", 30, "reader"):
                pass
        assert f"reader: waiting up to 30 s for the data lock {path} (shared), held by pid {holder.pid}" in caplog.text
        assert "reader: got the data lock" in caplog.text
    finally:
        holder.wait()


def test_readers_share_and_a_writer_excludes_them(tmp_path):
    path = tmp_path / ".lock"
    with ProjectLock(path, "shared", 0, "r1"), ProjectLock(path, "shared", 0, "r2"):
        with pytest.raises(ProjectLockTimeout) as info:
            ProjectLock(path, "exclusive", 0, "w").acquire()
        assert f"pid {os.getpid()} on" in str(info.value)
        assert "(shared, r1," in str(info.value) and "(shared, r2," in str(info.value)
    with ProjectLock(path, "exclusive", 0, "w"):
        with pytest.raises(ProjectLockTimeout, match=r"\(exclusive, w,"):
            ProjectLock(path, "shared", 0, "r3").acquire()


def _pipelines():
    from kedro.framework.project import configure_project

    from xoron_pipelines.pipeline_registry import register_pipelines

    configure_project("xoron_pipelines")
    return register_pipelines()


def test_lock_mode_follows_what_the_pipeline_does_with_data_processing_outputs():
    from xoron_pipelines.hooks import lock_mode

    pipelines = _pipelines()
    assert lock_mode(pipelines["data_processing"]) == "exclusive"
    assert lock_mode(pipelines["__default__"]) == "exclusive"
    assert lock_mode(pipelines["pretrain"]) == "shared"
    assert lock_mode(pipelines["evaluation"]) == "shared"
    assert lock_mode(pipelines["synth"]) is None


class _Context:
    def __init__(self, root: Path, timeout: float) -> None:
        self.project_path = root
        self.params = {"data_processing": {"lock_timeout_s": timeout}}


def test_the_hook_holds_the_lock_and_a_staging_area_in_data_for_the_run(tmp_path):
    from xoron_pipelines.datasets.generation import STAGING_ENV
    from xoron_pipelines.datasets.parquet_shards import staging_dir
    from xoron_pipelines.hooks import DataLockHook

    pipeline = _pipelines()["data_processing"]
    host = socket.gethostname()
    stale = tmp_path / "data" / ".staging" / f"999999999@{host}.deadbeef"  # a killed run's (no such pid)
    other_host = tmp_path / "data" / ".staging" / f"999999999@{host}-2.deadbeef"  # another host's: kept
    stale.mkdir(parents=True)
    other_host.mkdir()
    hook = DataLockHook()
    hook.after_context_created(_Context(tmp_path, 0))
    before = os.environ.get(STAGING_ENV)
    hook.before_pipeline_run({"pipeline_names": ["data_processing"]}, pipeline, None)
    staged = staging_dir("xoron-packed-train-")
    assert staged.parent.parent == tmp_path / "data" / ".staging" and not stale.exists() and other_host.exists()
    assert staged.parent.name.startswith(f"{os.getpid()}@{host}.")
    other_host.rmdir()
    with pytest.raises(ProjectLockTimeout, match=f"{tmp_path / LOCK_PATH}.*pid {os.getpid()} .*data_processing"):
        ProjectLock(tmp_path / LOCK_PATH, "shared", 0, "reader").acquire()
    hook.on_pipeline_error(RuntimeError("node failed"), {}, pipeline, None)  # a failed run
    assert not any((tmp_path / "data" / ".staging").iterdir())
    assert os.environ.get(STAGING_ENV) == before
    ProjectLock(tmp_path / LOCK_PATH, "exclusive", 0, "next").acquire().release()


@pytest.mark.slow
def test_kedro_run_waits_for_the_lock_then_stops_before_any_node(kedro_project: Path):
    from tests.helpers import run_pipeline

    with ProjectLock(kedro_project / LOCK_PATH, "shared", 0, "a training run"):
        started = time.monotonic()
        with pytest.raises(ProjectLockTimeout, match=rf"pid {os.getpid()} .*a training run"):
            run_pipeline(kedro_project, "data_processing", {"data_processing.lock_timeout_s": 1})
        assert time.monotonic() - started < 60
    assert not any((kedro_project / "data" / "02_intermediate").iterdir())  # no node ran
    import sqlite3

    with sqlite3.connect(kedro_project / "mlflow.db") as db:  # nor an MLflow run left RUNNING
        assert db.execute("select count(*) from runs").fetchone() == (0,)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1, True, "soon"])
def test_a_bad_lock_timeout_is_rejected_naming_the_key(project_root, value):
    import yaml

    from xoron_pipelines.validation import ParameterError, validate_group

    conf = project_root / "conf" / "base" / "parameters_data_processing.yml"
    base = yaml.safe_load(conf.read_text())["data_processing"]
    assert validate_group("data_processing", base).lock_timeout_s == 600
    with pytest.raises(ParameterError, match="data_processing.lock_timeout_s"):
        validate_group("data_processing", {**base, "lock_timeout_s": value})
