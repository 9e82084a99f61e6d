"""The project's data lock: one ``data_processing`` publish at a time, never under a reader.

A readers-writer lock on ``data/.data_processing.lock`` (``flock``): a run whose pipeline writes
``data_processing`` outputs (tokenizer, packed data, manifest, ledger) holds it *exclusively*; a
run that only reads them (``pretrain``, ``evaluation``, ...) holds it *shared*, so readers run side
by side (several training nodes of one job on shared storage, an evaluation beside a training)
but never while the tokenizer and the packed data are being replaced, and a publish never starts
under a running reader. Runs that touch neither (``synth`` alone) take no lock.

Why not lock every run exclusively: a multi-node training runs the same ``kedro run`` on each
node of one project; an exclusive lock would let one node in and keep the others waiting for
their own rendezvous.

``flock`` locks belong to the open file and vanish with the process: a lock of a killed run
(``kill -9``) is free at once, nothing to clean. Each holder also leaves a small record
(``data/.data_processing.lock.holders/<host>-<pid>``, removed on release; records of dead
processes on this host are ignored and removed) so a waiting run can name who holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

#: the lock file, relative to the project root
LOCK_PATH = Path("data") / ".data_processing.lock"

Mode = Literal["exclusive", "shared"]


class ProjectLockTimeout(RuntimeError):
    """The data lock stayed held by another run for longer than the run may wait."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProjectLock:
    """``with ProjectLock(path, "exclusive", timeout_s=60, what="kedro run --pipeline x"):`` ...

    ``acquire`` waits up to ``timeout_s`` seconds (0: do not wait), logging once that it waits
    and for whom, then raises :class:`ProjectLockTimeout` naming the lock file and the holders."""

    poll_s = 0.2

    def __init__(self, path: str | os.PathLike, mode: Mode, timeout_s: float, what: str = "") -> None:
        self.path = Path(path)
        self.mode = mode
        self.timeout_s = timeout_s
        self.what = what or f"pid {os.getpid()}"
        self.holders_dir = self.path.with_name(self.path.name + ".holders")
        self._record = self.holders_dir / f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._fd: int | None = None

    def holders(self) -> list[dict]:
        """The recorded holders still alive (records of dead processes on this host are removed)."""
        out = []
        host = socket.gethostname()
        for record in sorted(self.holders_dir.glob("*")) if self.holders_dir.is_dir() else []:
            if record == self._record:
                continue
            try:
                info = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if info.get("host") == host and not _alive(int(info.get("pid", -1))):
                record.unlink(missing_ok=True)
                continue
            out.append(info)
        return out

    def _describe_holders(self) -> str:
        holders = self.holders()
        if not holders:
            return "a process that left no record"
        return "; ".join(
            f"pid {h['pid']} on {h['host']} ({h['mode']}, {h['what']}, since {h['since']})" for h in holders
        )

    def acquire(self) -> ProjectLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        op = fcntl.LOCK_EX if self.mode == "exclusive" else fcntl.LOCK_SH
        deadline = time.monotonic() + self.timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise ProjectLockTimeout(
                        f"{self.what}: the data lock {self.path} is held by {self._describe_holders()}; "
                        f"waited {self.timeout_s:g} s (data_processing.lock_timeout_s). A data_processing run "
                        "and the runs that read its outputs (tokenizer, packed data) exclude each other; "
                        "retry when it has finished, or raise the timeout"
                    ) from None
                if not waited:
                    log.warning(
                        "%s: waiting up to %g s for the data lock %s (%s), held by %s",
                        self.what,
                        self.timeout_s,
                        self.path,
                        self.mode,
                        self._describe_holders(),
                    )
                    waited = True
                time.sleep(self.poll_s)
        self._fd = fd
        if waited:
            log.info("%s: got the data lock %s", self.what, self.path)
        self._write_record()
        return self

    def _write_record(self) -> None:
        with contextlib.suppress(OSError):
            self.holders_dir.mkdir(exist_ok=True)
            if self.mode == "exclusive":  # nobody else can hold it now: every other record is stale
                for record in self.holders_dir.glob("*"):
                    record.unlink(missing_ok=True)
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "mode": self.mode,
                "what": self.what,
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            self._record.write_text(json.dumps(info))

    def release(self) -> None:
        if self._fd is None:
            return
        self._record.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> ProjectLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def project_lock(
    project_path: str | os.PathLike, mode: Mode, timeout_s: float, what: str = ""
) -> Iterator[ProjectLock]:
    """The data lock of the project at ``project_path`` (see the module doc)."""
    with ProjectLock(Path(project_path) / LOCK_PATH, mode, timeout_s, what) as lock:
        yield lock
