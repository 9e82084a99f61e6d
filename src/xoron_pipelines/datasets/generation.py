"""Data generations: the tokenizer and everything packed with it carry one generation id.

``data_processing`` publishes four outputs from two nodes (the tokenizer, then the packed
train / val shards, the stage mixes and the packing manifest). Each is swapped into place on its
own, so the id ties them together: :class:`~xoron_pipelines.datasets.tokenizer.HFTokenizerDataset`
starts a new generation on every save and attaches it to the tokenizer it loads; the ``pack`` node
copies it onto the shard sets it returns and into ``packing_manifest.json`` (``generation``); the
shard datasets write it as ``_generation.json`` inside each published directory. Training compares
the ids before any step (``pipelines/training/data.py``).

The id lives in a marker file beside the data, never inside the Parquet or tokenizer bytes: the
same data packed twice stays byte-identical (the training fingerprint hashes those bytes). Its
name starts with ``_`` so that ``pyarrow.dataset.dataset(<dir>)`` skips it, as it skips ``_SUCCESS``.

Publishing (:func:`publishing`) builds the new directory as a hidden sibling of its target (same
filesystem, never the system temp dir), then swaps it in with one ``renameat2(RENAME_EXCHANGE)``:
the published path always exists and always holds a complete directory, old or new (two
``rename`` calls, the old way, leave a moment with no directory at all). Where the kernel or the
filesystem cannot exchange (not Linux, or e.g. some network filesystems) it falls back to
rename-aside-then-in, logging that once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import shutil
import socket
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

#: the marker file inside every published directory of a generation
MARKER = "_generation.json"
#: attribute carrying the generation id on a loaded tokenizer
_ATTR = "xoron_generation"
#: where staged node outputs go (set per run by the project hook to ``data/.staging/<run>``)
STAGING_ENV = "XORON_STAGING_DIR"


def new_generation_id() -> str:
    """A fresh id, sortable by time: ``20261206T122800Z-<8 hex>``."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def write_marker(directory: Path, generation: str) -> None:
    """Write ``_generation.json`` into ``directory`` (a staged directory, before it is published)."""
    record = {"generation": generation, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": socket.gethostname(), "pid": os.getpid()}
    (Path(directory) / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_marker(directory: Path) -> str | None:
    """The generation id of a published directory, or None when it has no marker (written before
    generations existed). A marker that cannot be read is an error naming the file."""
    path = Path(directory) / MARKER
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["generation"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable generation marker {path}: {exc}") from None


def generation_of(obj: Any) -> str | None:
    """The generation id attached to a loaded tokenizer (None if it was not loaded from a dataset)."""
    return getattr(obj, _ATTR, None)


def attach_generation(obj: Any, generation: str | None) -> Any:
    setattr(obj, _ATTR, generation)
    return obj


def umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_dir(parent: Path, prefix: str) -> Path:
    """A fresh uniquely named directory under ``parent`` with the user's umask applied
    (``mkdtemp`` alone forces 0700, which would then be published)."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o777 & ~umask())
    return path


def staging_root() -> Path:
    """Where nodes stage outputs before a dataset publishes them: ``$XORON_STAGING_DIR`` (a
    ``kedro run`` sets it to ``data/.staging/<run>``, same filesystem as the outputs), else the
    system temp dir (library use outside a run)."""
    return Path(os.environ.get(STAGING_ENV) or tempfile.gettempdir())


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
        log.warning("atomic directory exchange unsupported here: %s is replaced by two renames (briefly absent)",
                    dst)
        _exchange_fallback_logged = True
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dst, old)
    os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def publishing(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory beside ``dst`` (``.<name>.stage-XXXX``, user's umask); when
    the block succeeds it becomes ``dst`` (:func:`swap_into_place`); when it fails it is removed
    and ``dst`` is untouched."""
    dst = Path(dst)
    stage = make_dir(dst.parent, f".{dst.name}.stage-")
    try:
        yield stage
        swap_into_place(stage, dst)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def fill_from(stage: Path, src: Path, move: bool) -> None:
    """Put the contents of directory ``src`` into the empty ``stage`` dir: a rename when ``move``
    and both are on one filesystem, else a copy (``src`` is then removed when ``move``). The
    directory itself gets the user's umask whatever mode ``src`` had."""
    renamed = False
    if move:
        try:
            os.rename(src, stage)  # replaces the empty stage directory
            renamed = True
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    if not renamed:
        shutil.copytree(src, stage, dirs_exist_ok=True)
        if move:
            shutil.rmtree(src, ignore_errors=True)
    stage.chmod(0o777 & ~umask())  # src may come from mkdtemp (0700)
