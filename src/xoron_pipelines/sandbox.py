"""Run generated Python code outside the pipeline's own process, isolated by the kernel.

Generated code (synthetic programs whose output we record, model completions under test)
never runs inside the Kedro process. Two entry points share one child set-up:

- :func:`run_python` starts a fresh sandbox per program: for untrusted code (model output).
  It never raises: a failure of the sandbox itself is a failed result with its reason.
- :class:`SandboxWorker` keeps one sandbox that runs many small programs, each in a fresh
  namespace: for our own templated programs (the ``synth`` pipeline), where a process start
  per program would dominate the run time. It is isolated exactly like :func:`run_python`.

**Isolation ("namespaces", the default).** A launcher process unshares new user, mount,
network, pid, IPC and UTS namespaces (Linux, unprivileged user namespaces; no helper binary
needed) and forks the sandbox's init process, which builds a new root and ``pivot_root``\\ s
into it before running the program:

- Readable (read-only, ``nosuid``, ``nodev``): ``/usr``, ``/bin``, ``/sbin``, ``/lib*`` (the
  system's programs and libraries), ``/etc/ld.so.cache``, ``/etc/localtime``, the Python
  installation (``sys.base_prefix``) and the virtual environment (``sys.prefix``: when it lies
  inside the project, only that directory); ``/dev/null``, ``/dev/zero``, ``/dev/random``,
  ``/dev/urandom``; a ``/proc`` of the sandbox's own pid namespace.
- Writable: only ``/tmp`` (the working directory), a private tmpfs of ``limits.tmp_mb`` that
  vanishes with the sandbox.
- Not there at all: everything else: the project (``data/``, ``conf/``, sources), home
  directories, the rest of ``/etc``, the host's ``/tmp``, other mounts.
- The program runs as an unprivileged user with no capabilities (run as root, the sandbox
  maps itself to uid/gid 65534 on the host so that ``RLIMIT_NPROC`` binds), under rlimits
  (address space, CPU seconds, file size, no core files, ``limits.max_processes`` processes).
- No network: its network namespace has only a loopback interface that is down (``_socket``
  included), and abstract Unix sockets are per namespace.
- It sees only its own processes and cannot signal the pipeline (``os.getppid()`` is 0 in a
  new pid namespace; ``kill(0, ...)`` reaches at most the sandbox's own launcher).
- On timeout (or close) the launcher's process group is killed; the sandbox's init dies with
  it (``PR_SET_PDEATHSIG``) and the kernel kills every process of its pid namespace, children
  that called ``setsid()`` included. The launcher dies with the thread that started it (the
  pipeline killed with ``kill -9`` leaves no sandbox behind).

**Results** travel over a private pipe on an inherited descriptor (not 0, 1 or 2: the
program's stdin, stdout and stderr are ``/dev/null``; what it prints through ``sys.stdout`` is
captured), each answer tagged with the request's random id: a forged line on fd 1 is only
text, and a line written to the private pipe without the id is a protocol violation (a
failed result). A program can still read that id from the runner's memory: the channel stops
printing and exit tricks, not a program written to attack this runner. ``SystemExit`` (``exit()``,
``sys.exit(0)``) is an error, and a process that ends without answering (``os._exit(0)``) is
``ProcessDied``: a pass needs the whole program, tests included, to run to completion. The
answer is read with a deadline, so a partial line cannot hold the caller past the timeout.

**Without namespaces** (user namespaces disabled, not Linux) generated code is refused with
:class:`SandboxUnavailableError`, unless ``limits.allow_weak_isolation`` is set (parameter
``sandbox.allow_weak_isolation`` of ``evaluation`` and ``synth``). Weak isolation is what this
module did before: ``python -I`` in a temporary directory under the same rlimits except the
process count, Python-level socket blocking, a launcher between the program and the pipeline.
It does not stop a program from reading or writing the user's files, signalling the user's
processes, forking without limit, reaching the network through ``_socket``, or leaving a
``setsid()`` child behind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger(__name__)

#: host uid/gid the sandbox runs as when the pipeline runs as root (``nobody`` on most systems)
SANDBOX_HOST_ID = 65534
START_TIMEOUT_S = 30.0
WEAK_HINT = (
    "set sandbox.allow_weak_isolation: true (evaluation / synth parameters) to run it with weak "
    "isolation: the program could then read and write your files and reach the network"
)


class SandboxUnavailableError(RuntimeError):
    """No OS-level isolation on this machine, and weak isolation was not accepted."""


class SandboxError(RuntimeError):
    """The sandbox itself failed (could not start, broke the protocol)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock per program
    memory_mb: int = 1024  # RLIMIT_AS
    cpu_s: int = 30  # RLIMIT_CPU
    file_mb: int = 16  # RLIMIT_FSIZE
    max_processes: int = 32  # RLIMIT_NPROC (the sandbox's processes, its init included)
    tmp_mb: int = 64  # size of the private writable /tmp
    allow_weak_isolation: bool = False


@dataclass(frozen=True)
class SandboxResult:
    """What a program printed and how it ended. ``error``: the last traceback line ``"Type: message"``
    of an uncaught error (``"SystemExit: 0"`` included), or, with ``returncode`` -9, ``"Timeout"``,
    or, with ``returncode`` -1, ``"ProcessDied"`` (ended without answering), ``"SandboxError: ..."``,
    ``"SandboxUnavailable: ..."``; None when the program ran to completion."""

    stdout: str
    error: str | None
    timed_out: bool = False
    returncode: int = 0  # 0 when the program's runner answered; negative when the sandbox did not

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out and self.returncode == 0


# Executed before the runner in weak isolation only: no network from Python's socket module
# (namespaces need no such patch, and ``_socket`` walks around it).
_WEAK_PRELUDE = r"""
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

# The job runner (argv: request fd, result fd). Announces {"ready": true}, then reads JSON
# requests (one per line) {"id", "cells": [source, ...], "mode": "script" | "cells"} and answers
# each with one line {"id", "outputs", "error"}. "script" runs the one source as __main__ and
# returns its stdout and the last traceback line of an uncaught error; "cells" runs the sources
# in one namespace like notebook cells and returns, per cell, the printed text followed by the
# repr of a final expression that is not None. SystemExit is an error whatever its code.
_RUNNER = r"""
import ast, contextlib, io, json, os, sys

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
                error = f"SystemExit: {exc.code}"
            except BaseException as exc:
                error = _error_line(exc)
        outputs.append(out.getvalue() + (repr(value) if value is not None else ""))
        if error is not None:
            break
    return {"outputs": outputs, "error": error}

def _send(fd, message):
    data = (json.dumps(message) + "\n").encode("utf-8", "surrogatepass")
    while data:
        data = data[os.write(fd, data):]

def _main(requests, results):
    _send(results, {"ready": True})
    for line in requests:
        request = json.loads(line)
        response = _run(request)
        response["id"] = request["id"]
        _send(results, response)
        while True:  # reap what the program left (the runner may be its pid namespace's init)
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break

_main(os.fdopen(int(sys.argv[1]), "r", encoding="utf-8", errors="surrogateescape"), int(sys.argv[2]))
"""

# The launcher (``python -I -S -c _LAUNCHER <config json>``): sets up the isolation, forks the
# sandbox's init, and waits for it. Failures before the runner starts are reported over the
# result pipe as {"setup_error": "..."}.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys, traceback

cfg = json.loads(sys.argv[1])
REQ, RES = cfg["req_fd"], cfg["res_fd"]
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 28, 38, 47
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}.get(os.uname().machine)

def report(message):
    os.write(RES, (json.dumps({"setup_error": message}) + "\n").encode())
    os._exit(70)

def ok(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")

def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    ok(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {src} on {target}")

def bind(path, root, flags):
    target = root + path
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(path, target, None, MS_BIND)
    locked = os.statvfs(path).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)  # ST_* == MS_* for these; atime kept
    mount(None, target, None, MS_BIND | MS_REMOUNT | flags | locked)

def new_root():
    root = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in cfg["links"]:
        os.symlink(os.readlink(path), root + path)
    for path in cfg["ro_paths"]:
        bind(path, root, MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(root + "/dev")
    for name in ("null", "zero", "random", "urandom"):
        bind("/dev/" + name, root, MS_NOSUID | MS_NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp")
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmp_mb']}m,mode=0700")
    os.chown(root + "/tmp", cfg["uid"], cfg["uid"])
    os.mkdir(root + "/.old")
    os.chdir(root)
    if SYS_PIVOT_ROOT is None:
        raise OSError(f"pivot_root: unknown syscall number on {os.uname().machine}")
    ok(libc.syscall(SYS_PIVOT_ROOT, b".", b".old"), "pivot_root")
    os.chdir("/")
    ok(libc.umount2(b"/.old", MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)

def drop_privileges():
    for cap in range(64):  # empty bounding set: no exec regains a capability
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    ok(libc.prctl(PR_SET_SECUREBITS, 0x3, 0, 0, 0), "securebits")  # NOROOT, locked
    libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)
    if cfg["uid"] != 0:
        os.setgroups([])
        os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    ok(libc.capset(header, data), "capset")
    ok(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")

def limit():
    for name, value in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))

def run_init():
    try:
        if cfg["mode"] == "namespaces":
            new_root()
        limit()
        if cfg["mode"] == "namespaces":
            drop_privileges()
        os.chdir(cfg["cwd"])
        ok(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")  # after the uid change
        for fd in (REQ, RES):
            os.set_inheritable(fd, True)
        os.execve(cfg["python"], [cfg["python"], "-I", "-c", cfg["code"], str(REQ), str(RES)], cfg["env"])
    except BaseException as exc:
        report("".join(traceback.format_exception_only(type(exc), exc)).strip())

try:
    ok(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")  # the pipeline dies: so do we
    if os.getppid() != cfg["parent"]:
        os._exit(71)
    if cfg["mode"] == "namespaces":
        ok(libc.unshare(CLONE_NEWUSER), "unshare(user)")
        os.write(RES, b'{"stage": "userns"}\n')
        if os.read(REQ, 3) != b"go\n":
            report("the pipeline did not map the sandbox's user namespace")
        ok(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS),
           "unshare(mount, net, pid, ipc, uts)")
    pid = os.fork()
except BaseException as exc:
    report("".join(traceback.format_exception_only(type(exc), exc)).strip())
if pid == 0:
    run_init()
os.close(REQ)
os.close(RES)
os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) & 0xFF)
"""


def _ro_paths() -> tuple[list[str], list[str]]:
    """(top-level symlinks to recreate, paths to bind read-only), minimal and ordered."""
    links, paths = [], []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            links.append(top)
        elif os.path.isdir(top):
            paths.append(top)
    candidates = ["/etc/ld.so.cache", "/etc/localtime"]
    for p in (
        sys.base_prefix,
        sys.base_exec_prefix,
        sys.prefix,
        sys.exec_prefix,
        os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
    ):
        candidates += [os.path.abspath(p), os.path.realpath(p)]
    real = [os.path.realpath(p) for p in paths]
    for p in candidates:
        if not os.path.exists(p):
            continue
        covered = any(p == q or p.startswith(q.rstrip("/") + "/") for q in paths + real)
        if not covered and p not in links:
            paths.append(p)
    return links, paths


def _env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
    }


@lru_cache(maxsize=1)
def _isolation_probe() -> tuple[bool, str]:
    """(True, "") when a namespace sandbox starts and runs a program here, else (False, why)."""
    if not sys.platform.startswith("linux"):
        return False, f"namespaces need Linux (this is {sys.platform})"
    worker = SandboxWorker(SandboxLimits(timeout_s=START_TIMEOUT_S))
    worker.isolation = "namespaces"  # never ask the probe (this function) again, even on a restart
    try:
        worker._spawn("namespaces")
        result = worker.run("print('ok')")
        if result.stdout != "ok\n":
            return False, f"a probe program failed in the sandbox: {result.error}"
        return True, ""
    except (OSError, SandboxError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    finally:
        worker.close()


_warned_weak: list[str] = []  # the weak-isolation warning is logged once per process


def isolation_mode(limits: SandboxLimits) -> str:
    """``"namespaces"`` or (accepted weak isolation) ``"weak"``; raises SandboxUnavailableError
    when neither is possible. Call it before work starts to fail early."""
    available, why = _isolation_probe()
    if available:
        return "namespaces"
    if limits.allow_weak_isolation:
        if not _warned_weak:
            _warned_weak.append(why)
            log.warning(
                "sandbox: no OS-level isolation (%s); running generated code with weak isolation "
                "as sandbox.allow_weak_isolation is true",
                why,
            )
        return "weak"
    raise SandboxUnavailableError(
        f"refusing to run generated code: no OS-level isolation on this machine ({why}); {WEAK_HINT}"
    )


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run one untrusted program in a fresh sandbox. Never raises: a program that cannot run
    (no isolation, the sandbox failed) is a failed result whose error names the reason."""
    try:
        with SandboxWorker(limits) as worker:
            return worker.run(code)
    except SandboxUnavailableError as exc:
        return SandboxResult("", f"SandboxUnavailable: {exc}", returncode=-1)
    except Exception as exc:  # noqa: BLE001 - the contract is a result, whatever broke
        return SandboxResult("", f"SandboxError: {type(exc).__name__}: {exc}", returncode=-1)


class SandboxWorker:
    """One sandbox that runs many programs in turn, each in a fresh namespace.

    Entering the context (or the first program) decides the isolation (``isolation``:
    ``"namespaces"`` or ``"weak"``) and raises SandboxUnavailableError when generated code must
    be refused. A program that exceeds the timeout, kills its process or breaks the protocol is
    reported as such, and the whole sandbox (every process in it) is replaced for the next one.
    Processes a program leaves running (and files in ``/tmp``) stay until then or ``close()``.
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits()) -> None:
        self.limits = limits
        self.isolation: str | None = None
        self._dir: str | None = None
        self._proc: subprocess.Popen | None = None
        self._req = self._res = -1
        self._buffer = b""

    def __enter__(self) -> SandboxWorker:
        self.isolation = self.isolation or isolation_mode(self.limits)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ process

    def _spawn(self, mode: str) -> None:
        lim = self.limits
        self._dir = tempfile.mkdtemp(prefix="xoron-sandbox-")
        req_r, self._req = os.pipe()
        self._res, res_w = os.pipe()
        uid = 1 if (mode == "namespaces" and os.geteuid() == 0) else 0
        links, ro_paths = _ro_paths()
        rlimits = {
            "RLIMIT_AS": lim.memory_mb << 20,
            "RLIMIT_CPU": lim.cpu_s,
            "RLIMIT_FSIZE": lim.file_mb << 20,
            "RLIMIT_CORE": 0,
            "RLIMIT_NPROC": lim.max_processes,
        }
        if mode == "weak":  # outside a user namespace it would count all the user's processes
            rlimits.pop("RLIMIT_NPROC")
        home = "/tmp" if mode == "namespaces" else self._dir
        config = {
            "mode": mode,
            "parent": os.getpid(),
            "req_fd": req_r,
            "res_fd": res_w,
            "root": self._dir,
            "links": links,
            "ro_paths": ro_paths,
            "tmp_mb": lim.tmp_mb,
            "uid": uid,
            "rlimits": rlimits,
            "cwd": home,
            "env": _env(home),
            "python": sys.executable,
            "code": (_WEAK_PRELUDE if mode == "weak" else "") + _RUNNER,
        }
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(req_r, res_w),
                start_new_session=True,
                cwd="/",
                env=_env("/"),
            )
        finally:
            os.close(req_r)
            os.close(res_w)
        deadline = time.monotonic() + START_TIMEOUT_S
        if mode == "namespaces":
            self._expect("stage", deadline)
            self._map_ids(self._proc.pid)
            self._write(b"go\n")
        self._expect("ready", deadline)

    def _map_ids(self, pid: int) -> None:
        """Map the launcher's new user namespace: as root, ns 0 -> host 0 (to build the root)
        and ns 1 -> SANDBOX_HOST_ID (what the program runs as); otherwise ns 0 -> the user."""
        uid, gid = os.geteuid(), os.getegid()
        if uid == 0:
            uids = gids = f"0 0 1\n1 {SANDBOX_HOST_ID} 1\n"
        else:
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")
            uids, gids = f"0 {uid} 1\n", f"0 {gid} 1\n"
        for name, text in (("uid_map", uids), ("gid_map", gids)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)

    def _expect(self, key: str, deadline: float) -> dict:
        message = self._read_line(deadline)
        if message is None:
            raise SandboxError(
                f"the sandbox did not start within {START_TIMEOUT_S:.0f} s"
                if time.monotonic() >= deadline
                else f"the sandbox exited while starting (status {self._proc.poll()})"
            )
        if "setup_error" in message:
            raise SandboxError(f"the sandbox could not be set up: {message['setup_error']}")
        if key not in message:
            raise SandboxError(f"unexpected message from the sandbox while starting: {message!r}")
        return message

    def _start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._discard()
        self.__enter__()
        try:
            self._spawn(self.isolation)
        except BaseException:
            self._discard()
            raise

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self._req, data) :]

    def _read_line(self, deadline: float) -> dict | None:
        """The next line on the result pipe as JSON; None on timeout or end of file. Reads with a
        deadline, never blocking on a partial line."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._res], [], [], remaining)[0]:
                return None
            chunk = os.read(self._res, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line.decode("utf-8", "surrogateescape"))
        except ValueError:
            raise SandboxError(f"malformed line on the sandbox's result channel: {line[:80]!r}") from None
        if not isinstance(message, dict):
            raise SandboxError(f"malformed line on the sandbox's result channel: {line[:80]!r}")
        return message

    def _request(self, cells: list[str], mode: str) -> tuple[dict | None, str]:
        """(response, "") or (None, reason: "Timeout", "ProcessDied", "SandboxError: ...")."""
        self._start()
        request_id = secrets.token_hex(16)
        try:
            request = json.dumps({"id": request_id, "cells": cells, "mode": mode}) + "\n"
            self._write(request.encode("utf-8", "surrogatepass"))
        except BrokenPipeError:
            self._discard()
            return None, "ProcessDied"
        deadline = time.monotonic() + self.limits.timeout_s
        try:
            response = self._read_line(deadline)
            if response is not None and response.get("id") != request_id:
                raise SandboxError("a line without the request's id on the sandbox's result channel (forged?)")
        except SandboxError as exc:
            self._discard()
            return None, f"SandboxError: {exc}"
        if response is None:
            timed_out = time.monotonic() >= deadline
            self._discard()
            return None, "Timeout" if timed_out else "ProcessDied"
        return response, ""

    def run(self, code: str) -> SandboxResult:
        """Run ``code`` as ``__main__``: its stdout and uncaught-error line. Raises only
        SandboxUnavailableError (or SandboxError when the sandbox cannot start)."""
        response, reason = self._request([code], "script")
        if response is None:
            return SandboxResult("", reason, reason == "Timeout", -9 if reason == "Timeout" else -1)
        return SandboxResult(response["outputs"][0] if response["outputs"] else "", response["error"])

    def run_cells(self, cells: list[str]) -> list[str]:
        """Run notebook cells in one namespace; per cell, printed text + repr of a final value.

        Raises RuntimeError when a cell fails: our own notebook templates must not fail.
        """
        response, reason = self._request(list(cells), "cells")
        if response is None or response["error"] is not None:
            raise RuntimeError(f"notebook cells failed in the sandbox: {reason or response['error']}")
        return response["outputs"]

    def _discard(self) -> None:
        """Kill the sandbox (its launcher's process group; the init and with it every process
        of its pid namespace follow) and release its pipes and directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for fd in (self._req, self._res):
            if fd >= 0:
                os.close(fd)
        self._req = self._res = -1
        self._buffer = b""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def close(self) -> None:
        """End the sandbox: end of input lets the runner exit; killed after 5 s otherwise."""
        if self._proc is not None and self._req >= 0:
            os.close(self._req)
            self._req = -1
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._discard()
