"""Generated code runs in a sandboxed child: output, errors, limits, isolation."""

from __future__ import annotations

import os

from xoron_pipelines.sandbox import SandboxLimits, SandboxWorker, run_python


def test_stdout_and_error_line():
    ok = run_python("print(6 * 7)")
    assert ok.stdout == "42\n" and ok.error is None and ok.ok
    bad = run_python("print('before')\n1 / 0")
    assert bad.stdout == "before\n"
    assert bad.error == "ZeroDivisionError: division by zero"
    assert not bad.ok


def test_runs_in_another_process_and_temp_dir(tmp_path):
    res = run_python("import os; print(os.getpid()); print(os.getcwd())")
    pid, cwd = res.stdout.split()
    assert int(pid) != os.getpid()
    assert "xoron-sandbox-" in cwd and not cwd.startswith(str(tmp_path))


def test_timeout_kills_and_worker_recovers():
    with SandboxWorker(SandboxLimits(timeout_s=1.0)) as worker:
        slow = worker.run("while True: pass")
        assert slow.timed_out and slow.error == "Timeout"
        assert worker.run("print('alive')").stdout == "alive\n"


def test_memory_limit():
    res = run_python("x = bytearray(2 * 1024**3)", SandboxLimits(memory_mb=256))
    assert res.error is not None and "MemoryError" in res.error


def test_network_is_blocked():
    res = run_python("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))")
    assert res.error is not None and ("network access is disabled" in res.error or "OSError" in res.error)


def test_fresh_namespace_per_program_and_cells_share_one():
    with SandboxWorker() as worker:
        worker.run("leak = 1")
        assert worker.run("print(leak)").error == "NameError: name 'leak' is not defined"
        assert worker.run_cells(["x = 3", "print('hi')\nx * 2", "None"]) == ["", "hi\n6", ""]
