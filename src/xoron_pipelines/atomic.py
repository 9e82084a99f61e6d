"""Atomic writes: build in a temporary sibling, then rename into place; permissions follow the umask.

The one place the project writes outputs atomically (files, directories, Parquet shard sets,
tokenizers, models, exports, caches). A failed write never leaves a partial file or directory
behind, and a previous file or directory at the same path stays intact until the new one is
complete. A directory is then swapped in with one ``renameat2(RENAME_EXCHANGE)``
(:func:`swap_into_place`): the published path always exists and always holds a complete
directory, old or new. Where the kernel or the filesystem cannot exchange (not Linux, or e.g. some
network filesystems) it falls back to rename-aside-then-in (the path is briefly absent), logging
that once.

``tempfile.mkstemp`` / ``mkdtemp`` create their file 0600 and their directory 0700 whatever the
umask, and so do some writers (safetensors' ``save_file``); every output passes through
:func:`default_permissions` just before it is published, so a file is ``0o666 & ~umask`` (an
executable one ``0o777 & ~umask``) and a directory ``0o777 & ~umask``, everything inside it
included (0644 / 0755 under the usual umask 022, 0600 / 0700 under 077), as if it had been
created with ``open`` / ``mkdir``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``/proc/self/status``);
    elsewhere by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_permissions(path: str | os.PathLike, recursive: bool = False) -> Path:
    """chmod ``path`` (with ``recursive``, also everything under it) to what ``open`` / ``mkdir``
    would have given it under the current umask: ``0o777 & ~umask`` for a directory or a file
    with an execute bit, ``0o666 & ~umask`` for any other file. Symlinks are left alone.
    Returns the path."""
    path = Path(path)
    mask = current_umask()
    paths = [path, *path.rglob("*")] if recursive and path.is_dir() else [path]
    for item in paths:
        if item.is_symlink():
            continue
        executable = item.is_dir() or item.stat().st_mode & 0o111
        item.chmod((0o777 if executable else 0o666) & ~mask)
    return path


def fresh_dir(parent: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """A new uniquely named empty directory under ``parent`` with umask permissions (``mkdtemp``
    alone forces 0700)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return default_permissions(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))


def staging_dir(target: str | os.PathLike, prefix: str | None = None) -> Path:
    """A new empty directory beside ``target`` (same filesystem, so a rename publishes it),
    with umask permissions. The caller removes it if it is not published."""
    target = Path(target)
    return fresh_dir(target.parent, prefix or f".{target.name}.stage-", ".tmp")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_exchange_fallback_logged = False


@functools.cache
def _renameat2():
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def swap_into_place(new: Path, dst: Path) -> None:
    """Make the complete directory ``new`` (a sibling of ``dst``) the published ``dst``; the old
    one is removed afterwards. ``dst`` never disappears where the exchange is supported."""
    global _exchange_fallback_logged
    if not dst.exists():
        os.rename(new, dst)
        return
    if _exchange(new, dst):  # new now holds the old directory
        shutil.rmtree(new, ignore_errors=True)
        return
    if not _exchange_fallback_logged:
        log.warning("atomic directory exchange unsupported here: %s is replaced by two renames (briefly absent)", dst)
        _exchange_fallback_logged = True
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dst, old)
    os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, prefix: str | None = None) -> Iterator[Path]:
    """Yield an empty directory beside ``path`` (named ``prefix``..., default ``.<name>.stage-``...)
    that becomes ``path`` when the block succeeds (:func:`swap_into_place`, umask permissions on
    everything in it); when the block fails it is removed and ``path`` is untouched. A process
    killed before the end leaves only that staging directory behind."""
    path = Path(path)
    tmp = staging_dir(path, prefix)
    try:
        yield tmp
        default_permissions(tmp, recursive=True)
        swap_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        default_permissions(tmp)  # the writer may have replaced the file: chmod what is published
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", errors: str | None = None
) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the block succeeds
    (``mode`` "w" or "wb"; ``encoding`` and ``errors`` ignored for binary)."""
    text = "b" not in mode
    with (
        atomic_file(path) as tmp,
        open(tmp, mode, encoding=encoding if text else None, errors=errors if text else None) as fh,
    ):
        yield fh
