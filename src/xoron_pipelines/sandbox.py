"""Run generated Python code outside the pipeline's own process.

Generated code (synthetic programs whose output we record, model completions under test)
never runs inside the Kedro process. Two entry points share one child set-up:

- :func:`run_python` starts a fresh child per program: for untrusted code (model output).
- :class:`SandboxWorker` keeps one child that runs many small programs, each in a fresh
  namespace: for our own templated programs (the ``synth`` pipeline), where a process start
  per program would dominate the run time.

Every child runs ``python -I`` (isolated: no user site, no PYTHON* variables) in a fresh
temporary directory with a minimal environment, in a new session, under resource limits
(address space, CPU seconds, file size, no core files), with sockets disabled, and in a new
network namespace when ``unshare -n`` is permitted. A wall-clock timeout kills the child.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache

# Executed first in every child: no network from Python, then the job.
_PRELUDE = r"""
import socket as _socket
def _no_network(*_a, **_k):
    raise OSError("network access is disabled in the sandbox")
_socket.socket.connect = _no_network
_socket.socket.connect_ex = _no_network
_socket.socket.bind = _no_network
_socket.create_connection = _no_network
_socket.getaddrinfo = _no_network
del _socket
"""

# The child's job runner: reads JSON requests (one per line), answers one JSON line each.
# A request is {"cells": [source, ...], "mode": "script" | "cells"}. "script" runs the one
# source as __main__ and returns its stdout and the last traceback line of an uncaught error;
# "cells" runs the sources in one namespace like notebook cells and returns, per cell, the
# printed text followed by the repr of a final expression that is not None.
_RUNNER = r"""
import ast, contextlib, io, json, sys, traceback

def _error_line(exc):
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

def _run(request):
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    outputs, error = [], None
    for source in request["cells"]:
        out = io.StringIO()
        value = None
        with contextlib.redirect_stdout(out):
            try:
                if request["mode"] == "cells":
                    tree = ast.parse(source)
                    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
                    body = ast.Module(body=tree.body[:-1] if last else tree.body, type_ignores=[])
                    exec(compile(body, "<cell>", "exec"), namespace)
                    if last is not None:
                        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
                else:
                    exec(compile(source, "<program>", "exec"), namespace)
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    error = f"SystemExit: {exc.code}"
            except BaseException as exc:
                error = _error_line(exc)
        outputs.append(out.getvalue() + (repr(value) if value is not None else ""))
        if error is not None:
            break
    return {"outputs": outputs, "error": error}

_stdout = sys.stdout
for line in sys.stdin:
    response = _run(json.loads(line))
    _stdout.write(json.dumps(response) + "\n")
    _stdout.flush()
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024
    cpu_s: int = 30
    file_mb: int = 16


@dataclass(frozen=True)
class SandboxResult:
    stdout: str
    error: str | None  # last traceback line "Type: message" of an uncaught error, else None
    timed_out: bool = False
    returncode: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out and self.returncode == 0


def _limit(limits: SandboxLimits):
    def apply() -> None:
        os.setsid()
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        size = limits.file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


@lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...]:
    """``("unshare", "-n")`` where this machine lets us create a network namespace."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    try:
        ok = subprocess.run([exe, "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (exe, "-n") if ok else ()


def _child_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}


def _command() -> list[str]:
    return [*_unshare_prefix(), sys.executable, "-I", "-c", _PRELUDE + _RUNNER]


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run one untrusted program in a fresh sandboxed child; never raises for the program's errors."""
    with SandboxWorker(limits) as worker:
        return worker.run(code)


class SandboxWorker:
    """One sandboxed child that runs many programs in turn, each in a fresh namespace.

    A program that exceeds the timeout (or kills its process) is reported as such and the
    child is restarted for the next program.
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits()) -> None:
        self.limits = limits
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "SandboxWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="xoron-sandbox-")
            self._proc = subprocess.Popen(
                _command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                cwd=self._tmp.name, env=_child_env(self._tmp.name), text=True, encoding="utf-8",
                preexec_fn=_limit(self.limits),
            )
        return self._proc

    def _request(self, cells: list[str], mode: str) -> tuple[dict | None, bool, int]:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"cells": cells, "mode": mode}) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            return None, False, self._reap()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(self.limits.timeout_s):
                self._kill()
                return None, True, -9
        line = proc.stdout.readline()
        if not line:
            return None, False, self._reap()
        return json.loads(line), False, 0

    def run(self, code: str) -> SandboxResult:
        """Run ``code`` as ``__main__``: its stdout and uncaught-error line."""
        response, timed_out, rc = self._request([code], "script")
        if response is None:
            return SandboxResult("", "Timeout" if timed_out else "ProcessDied", timed_out, rc)
        return SandboxResult(response["outputs"][0] if response["outputs"] else "", response["error"])

    def run_cells(self, cells: list[str]) -> list[str]:
        """Run notebook cells in one namespace; per cell, printed text + repr of a final value.

        Raises RuntimeError when a cell fails: our own notebook templates must not fail.
        """
        response, timed_out, _ = self._request(list(cells), "cells")
        if response is None or response["error"] is not None:
            reason = "timed out" if timed_out else (response or {}).get("error", "process died")
            raise RuntimeError(f"notebook cells failed in the sandbox: {reason}")
        return response["outputs"]

    def _reap(self) -> int:
        proc, self._proc = self._proc, None
        return proc.wait() if proc is not None else 0

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, 9)
        self._reap()

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
