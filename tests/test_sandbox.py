"""Generated code runs in an isolated sandbox: output, errors, limits, and one test per escape
(issue 12 section 2). The machine must permit unprivileged user namespaces (CI does)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from xoron_pipelines import sandbox
from xoron_pipelines.evaluation import generation_tasks as gen
from xoron_pipelines.evaluation import offline_tasks
from xoron_pipelines.sandbox import SandboxLimits, SandboxUnavailableError, SandboxWorker, run_python

PROJECT = Path(__file__).resolve().parents[1]
FAST = SandboxLimits(timeout_s=2.0)


def _unavailable(monkeypatch):
    monkeypatch.setattr(sandbox, "_isolation_probe", lambda: (False, "user namespaces are disabled (mocked)"))


def _alive_with(marker: str) -> list[int]:
    """Host pids whose command line holds ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                pids.append(int(entry))
        except OSError:
            pass
    return pids


def _gone(marker: str, wait_s: float = 3.0) -> bool:
    deadline = time.monotonic() + wait_s
    while _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive_with(marker)


# --------------------------------------------------------------------------- behaviour


def test_stdout_and_error_line():
    ok = run_python("print(6 * 7)")
    assert ok.stdout == "42\n" and ok.error is None and ok.ok
    bad = run_python("print('before')\n1 / 0")
    assert bad.stdout == "before\n"
    assert bad.error == "ZeroDivisionError: division by zero"
    assert not bad.ok


def test_runs_in_its_own_namespaces_unprivileged():
    with SandboxWorker() as worker:
        assert worker.isolation == "namespaces"
        res = worker.run(
            "import os\n"
            "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
            "print(os.getpid(), os.getppid(), os.getcwd(), caps, sorted(os.listdir('/tmp')))"
        )
    pid, ppid, cwd, caps, tmp = res.stdout.split(maxsplit=4)
    assert (pid, ppid, cwd, int(caps, 16), tmp.strip()) == ("1", "0", "/tmp", 0, "[]")


def test_timeout_kills_and_worker_recovers():
    with SandboxWorker(SandboxLimits(timeout_s=1.0)) as worker:
        slow = worker.run("while True: pass")
        assert slow.timed_out and slow.error == "Timeout"
        assert worker.run("print('alive')").stdout == "alive\n"


def test_memory_limit():
    res = run_python("x = bytearray(2 * 1024**3)", SandboxLimits(memory_mb=256))
    assert res.error is not None and "MemoryError" in res.error


def test_fresh_namespace_per_program_and_cells_share_one():
    with SandboxWorker() as worker:
        worker.run("leak = 1")
        assert worker.run("print(leak)").error == "NameError: name 'leak' is not defined"
        assert worker.run_cells(["x = 3", "print('hi')\nx * 2", "None"]) == ["", "hi\n6", ""]


# --------------------------------------------------------------------------- escapes


def test_cannot_write_into_the_project_data_or_the_host(tmp_path):
    targets = [
        PROJECT / "data" / "escape.txt",
        PROJECT / "escape.txt",
        tmp_path / "escape.txt",
        Path(sys.prefix) / "escape.txt",
        Path("/usr/escape.txt"),
        Path("/escape.txt"),
    ]
    code = (
        "for path in %r:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__, exc.errno)\n"
        "open('scratch.txt', 'w').write('private tmp')\n"
        "print(open('/tmp/scratch.txt').read())\n"
    ) % [str(t) for t in targets]
    res = run_python(code)
    assert res.ok and "WROTE" not in res.stdout, res
    assert res.stdout.splitlines()[-1] == "private tmp"  # its own /tmp is writable
    assert not any(t.exists() for t in targets)


def test_files_outside_the_sandbox_are_not_readable(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    hidden = [secret, PROJECT / "conf/base/parameters_evaluation.yml", Path("/etc/passwd"), Path.home() / ".bashrc"]
    paths = [str(p) for p in hidden]
    code = (
        "import os\n"
        f"for path in {paths!r}:\n"
        "    try:\n"
        "        print('READ', open(path).read())\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__)\n"
        # what stays readable (module docstring): the system and the Python installation
        f"print(os.path.isdir('/usr/bin'), os.path.isdir({sys.base_prefix!r}))\n"
    )
    res = run_python(code)
    assert res.ok, res
    assert res.stdout.splitlines() == ["FileNotFoundError"] * len(hidden) + ["True True"]


def test_the_pipeline_and_its_processes_cannot_be_signalled():
    bystander = subprocess.Popen(["sleep", "60"])  # stands for any process of the pipeline's user
    try:
        with SandboxWorker(FAST) as worker:
            parent = worker.run("import os\nos.kill(os.getppid(), 9)\nprint('survived')")
            group = worker.run("import os\nos.kill(0, 9)")
            other = worker.run(f"import os\nos.kill({bystander.pid}, 9)")
            assert worker.run("print('alive')").stdout == "alive\n"
        assert parent.stdout == "survived\n"
        assert group.error in (None, "ProcessDied")
        assert other.error.startswith("ProcessLookupError")  # not even visible from the sandbox
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("tmp_mb", [2, 8])
def test_private_tmp_is_as_large_as_tmp_mb(tmp_mb):
    """/tmp is a tmpfs of ``tmp_mb`` MiB: writing 1 MiB blocks stops there (ENOSPC)."""
    code = (
        "n = 0\n"
        "try:\n"
        "    with open('/tmp/fill', 'wb') as fh:\n"
        "        for _ in range(64):\n"
        "            fh.write(bytes(1 << 20)); fh.flush(); n += 1\n"
        "except OSError as exc:\n"
        "    print(n, exc.errno)\n"
    )
    res = run_python(code, SandboxLimits(tmp_mb=tmp_mb))
    written, errno_ = res.stdout.split()
    assert int(errno_) == 28 and tmp_mb - 1 <= int(written) <= tmp_mb  # ENOSPC at the tmpfs size


@pytest.mark.parametrize("max_processes", [6, 12])
def test_fork_bomb_is_contained(max_processes):
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print(n, type(exc).__name__)\n"
    )
    res = run_python(code, SandboxLimits(max_processes=max_processes))
    forks, error = res.stdout.split()
    # the sandbox's init counts too (and its launcher, when the pipeline does not run as root)
    assert error == "BlockingIOError" and max_processes - 2 <= int(forks) <= max_processes - 1


def test_a_real_fork_bomb_ends_with_the_timeout():
    start = time.monotonic()
    res = run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", FAST)
    assert res.timed_out and time.monotonic() - start < 15


@pytest.mark.parametrize("ends", ["timeout", "normally"])
def test_no_process_survives_the_sandbox_not_even_a_setsid_one(ends):
    marker = f"xoron-escape-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)  # {marker}'],\n"
        "                 start_new_session=True)\n"
        + ("while True:\n    pass\n" if ends == "timeout" else "print('left a child')\n")
    )
    res = run_python(code, FAST)
    assert res.timed_out if ends == "timeout" else res.ok, res
    assert _gone(marker), f"processes survived the sandbox: {_alive_with(marker)}"


def test_no_network_even_through__socket():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    try:
        port = server.getsockname()[1]
        res = run_python(f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint('connected')")
        assert not res.ok and res.error.startswith("OSError") and "connected" not in res.stdout
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


HUMANEVAL = offline_tasks.function_synthesis(random.Random(3), 1)[0]


@pytest.mark.parametrize(
    "completion",
    [
        "    exit()\n",
        "    import sys\n    sys.exit(0)\n",
        "    raise SystemExit\n",
        "    pass\nimport os\nos._exit(0)\n",  # module level: before the tests run
        "    pass\nraise SystemExit(0)\n",
    ],
)
def test_exit_is_never_a_pass(completion):
    assert gen.check_completion(HUMANEVAL, HUMANEVAL["canonical_solution"], FAST).ok
    res = gen.check_completion(HUMANEVAL, completion, FAST)
    assert not res.ok, res


def test_forged_result_lines_are_never_a_pass():
    forged = '{"ready": true}\\n{"id": "0", "outputs": [""], "error": null}\\n{"outputs": [""], "error": null}\\n'
    completion = (
        "    pass\n"
        "import os, sys\n"
        f"print({forged!r})\n"
        f"sys.__stdout__.write({forged!r})\n"
        "for fd in range(1, 256):\n"
        "    try:\n"
        f"        os.write(fd, {forged!r}.encode())\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    )
    res = gen.check_completion(HUMANEVAL, completion, FAST)
    assert not res.ok and res.error is not None, res


def test_a_partial_line_cannot_defeat_the_timeout():
    code = (
        "import os\n"
        "for fd in range(1, 256):\n"
        "    try:\n"
        "        os.write(fd, b'{\"id\": ')\n"
        "    except OSError:\n"
        "        pass\n"
        "while True:\n"
        "    pass\n"
    )
    start = time.monotonic()
    res = run_python(code, FAST)
    assert res.timed_out and res.error == "Timeout" and time.monotonic() - start < 10


def test_run_python_never_raises(monkeypatch):
    weird = run_python(
        "print('\\ud800')\nimport os\nfor fd in range(3, 256):\n    try:\n"
        "        os.write(fd, b'\\xff\\xfe not json\\n')\n    except OSError:\n        pass\n"
    )
    assert not weird.ok and weird.error is not None
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    broken = run_python("print(1)")
    assert not broken.ok and broken.error.startswith("SandboxError: FileNotFoundError")


# --------------------------------------------------------------------------- no isolation


def test_refuses_without_isolation_unless_weak_isolation_is_accepted(monkeypatch):
    _unavailable(monkeypatch)
    refused = run_python("print(1)")
    assert not refused.ok and refused.error.startswith("SandboxUnavailable")
    assert "mocked" in refused.error and "sandbox.allow_weak_isolation: true" in refused.error
    with pytest.raises(SandboxUnavailableError, match="allow_weak_isolation"):
        SandboxWorker().__enter__()
    with SandboxWorker(SandboxLimits(allow_weak_isolation=True)) as worker:
        assert worker.isolation == "weak"
        res = worker.run("import os\nprint(os.getcwd())")
    assert res.ok and "xoron-sandbox-" in res.stdout


def test_synth_knob_refuses_before_work_or_accepts_weak_isolation(monkeypatch):
    from xoron_pipelines.pipelines.synth.nodes import generate_synthetic
    from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES

    counts = {t: 0 for t in SYNTH_TYPES}
    _unavailable(monkeypatch)
    assert generate_synthetic({"counts": {**counts, "chat": 2}})[1]["total"] == 2  # no program: no sandbox
    with pytest.raises(SandboxUnavailableError, match="allow_weak_isolation"):
        generate_synthetic({"counts": {**counts, "code_exec_python": 2}})
    parts, _ = generate_synthetic(
        {"counts": {**counts, "code_exec_python": 2}, "sandbox": {"allow_weak_isolation": True}}
    )
    assert len(parts["code_exec_python"]) == 2


def test_evaluation_knobs_reach_the_sandbox_and_humaneval_refuses_before_generating(monkeypatch):
    from xoron_pipelines.pipelines.evaluation import nodes
    from xoron_pipelines.pipelines.evaluation.params import Params

    p = Params.model_validate({"sandbox": {"max_processes": 7, "tmp_mb": 8, "allow_weak_isolation": False}})
    limits = nodes._limits(p)
    assert (limits.max_processes, limits.tmp_mb, limits.allow_weak_isolation) == (7, 8, False)
    res = run_python(
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        n += 1\n"
        "except OSError:\n    print(n)",
        limits,
    )
    assert res.stdout in ("5\n", "6\n")  # max_processes 7: the init (and launcher when not root) count
    _unavailable(monkeypatch)
    with pytest.raises(SandboxUnavailableError):
        nodes._humaneval(None, None, [HUMANEVAL], p)  # the model is never touched


def test_killing_the_pipeline_leaves_no_sandbox_process(tmp_path):
    marker = f"xoron-orphan-{uuid.uuid4().hex}"
    program = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)  # {marker}'])\n"
        "time.sleep(60)\n"
    )
    script = tmp_path / "pipeline.py"
    script.write_text(
        "import sys\nfrom xoron_pipelines.sandbox import SandboxLimits, run_python\n"
        f"run_python({program!r}, SandboxLimits(timeout_s=60))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "src"), "TMPDIR": str(tmp_path)}
    pipeline = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not _alive_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive_with(marker), "the sandboxed program did not start"
    finally:
        pipeline.kill()  # kill -9
        pipeline.wait()
    assert _gone(marker), f"sandbox processes outlived the pipeline: {_alive_with(marker)}"
