"""Crash safety: a run SIGKILLed at any point and re-run ends bit-identical to an uninterrupted run.

Each run is ``resume_worker.py`` in a subprocess (TinyLM, CPU, deterministic mode, dropout, a
load-balancing buffer, gradient accumulation 2, checkpoints every 2 steps keeping 2, an eval that
draws random numbers every 3 steps, two epochs). The killed run is re-run with the very same
command (and environment, minus the kill switch) and must finish with ``torch.equal`` weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("resume_worker.py")

# (kill switch, asynchronous checkpointing, what the killed run must have left behind)
KILLS = {
    "mid_accumulation": ("forward:12", "0", ["checkpoint-2", "checkpoint-4"]),  # 2nd micro-batch of step 6
    "right_after_save": ("after_save:6", "0", ["checkpoint-2", "checkpoint-4", "checkpoint-6"]),  # not pruned yet
    "during_async_save": ("during_save:4", "1", ["checkpoint-2"]),  # + a half-written temp dir
}


def _start(ckpt: Path, out: Path, kill: str | None = None, asynchronous: str = "0") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XORON_TEST_KILL"}
    env["XORON_TEST_ASYNC"] = asynchronous
    if kill:
        env["XORON_TEST_KILL"] = kill
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(ckpt), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """All runs, started in parallel (they are independent): the uninterrupted one and the killed
    ones; then the killed ones re-run with the same command. Returns return codes, outputs and the
    checkpoint directory listing each killed run left behind."""
    root = tmp_path_factory.mktemp("resume")
    procs = {"uninterrupted": _start(root / "A", root / "A.safetensors")}
    for name, (kill, asynchronous, _) in KILLS.items():
        procs[name] = _start(root / name, root / f"{name}.safetensors", kill, asynchronous)
    killed = {name: _finish(p) for name, p in procs.items()}
    left = {name: sorted(p.name for p in (root / name).iterdir()) for name in KILLS}
    reruns = {name: _start(root / name, root / f"{name}.safetensors", None, KILLS[name][1]) for name in KILLS}
    return {"root": root, "killed": killed, "left": left, "rerun": {n: _finish(p) for n, p in reruns.items()}}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_uninterrupted_run_completes(runs):
    rc, out = runs["killed"]["uninterrupted"]
    assert rc == 0, out
    state = json.loads((runs["root"] / "A" / "checkpoint-10" / "trainer_state.json").read_text())["state"]
    assert state["step"] == 10 and state["micro_step"] == 20 and state["finished"] is True
    # keep_last_k=2: only the two newest checkpoints are left
    assert sorted(p.name for p in (runs["root"] / "A").iterdir()) == ["checkpoint-10", "checkpoint-8"]


@pytest.mark.parametrize("name", list(KILLS))
def test_killed_run_resumes_bit_identical(runs, name):
    root = runs["root"]
    kill, asynchronous, left_behind = KILLS[name]
    rc, out = runs["killed"][name]
    assert rc == -signal.SIGKILL, f"the run was not killed ({rc}):\n{out}"
    ckpt_dir = root / name
    assert [n for n in runs["left"][name] if not n.startswith(".")] == left_behind
    if name == "during_async_save":  # the half-written checkpoint is a temp dir, never checkpoint-4
        assert [n for n in runs["left"][name] if n.startswith(".tmp-checkpoint-4-")]

    rc, out = runs["rerun"][name]
    assert rc == 0, out
    assert f"resumed from {ckpt_dir / left_behind[-1]} at step {left_behind[-1].split('-')[1]}" in out
    reference, resumed = _weights(root / "A.safetensors"), _weights(root / f"{name}.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), f"{key} differs after resume ({name})"
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")]  # stale temp dir cleaned
