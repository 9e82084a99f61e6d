"""``python kill_kedro.py STEP run ...``: ``kedro run ...`` that SIGKILLs itself right after the
first training checkpoint of step STEP has been renamed into place (the process then dies with
no chance to clean up, as under ``kill -9``). Used by test_resume_e2e.py."""

import os
import runpy
import signal
import sys

from xoron_pipelines.training import checkpoint

STEP = int(sys.argv.pop(1))
_write = checkpoint.write_checkpoint


def _write_then_die(root, snap):
    path = _write(root, snap)
    if snap.step == STEP:
        os.kill(os.getpid(), signal.SIGKILL)
    return path


checkpoint.write_checkpoint = _write_then_die
sys.argv[0] = "kedro"
runpy.run_module("kedro", run_name="__main__")
