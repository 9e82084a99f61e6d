"""Data generations: the tokenizer and everything packed with it carry one generation id.

``data_processing`` publishes four outputs from two nodes (the tokenizer, then the packed
train / val shards, the stage mixes and the packing manifest). Each is swapped into place on its
own, so the id ties them together: :class:`~xoron_pipelines.datasets.tokenizer.HFTokenizerDataset`
starts a new generation on every save and attaches it to the tokenizer it loads; the ``pack`` node
copies it onto the shard sets it returns and into ``packing_manifest.json`` (``generation``); the
shard datasets write it as ``_generation.json`` inside each published directory. Training compares
the ids before any step (``training/stage_data.py``).

The id lives in a marker file beside the data, never inside the Parquet or tokenizer bytes: the
same data packed twice stays byte-identical (the training fingerprint hashes those bytes). Its
name starts with ``_`` so that ``pyarrow.dataset.dataset(<dir>)`` skips it, as it skips ``_SUCCESS``.

Each directory is published with :func:`xoron_pipelines.atomic.atomic_dir` (built as a hidden
sibling of its target, then exchanged with it in one step: the published path never disappears).
Nodes stage what they write under :func:`staging_root`, on the outputs' filesystem during a run.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: the marker file inside every published directory of a generation
MARKER = "_generation.json"
#: attribute carrying the generation id on a loaded tokenizer
_ATTR = "xoron_generation"
#: where staged node outputs go (set per run by the project hook to ``data/.staging/<run>``)
STAGING_ENV = "XORON_STAGING_DIR"


class GenerationMismatchError(ValueError):
    """Outputs of different data_processing runs (or a tokenizer that does not cover the packed
    ids) were given to one consumer."""


def new_generation_id() -> str:
    """A fresh id, sortable by time: ``20261206T122800Z-<8 hex>``."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def write_marker(directory: Path, generation: str) -> None:
    """Write ``_generation.json`` into ``directory`` (a staged directory, before it is published)."""
    record = {
        "generation": generation,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
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


def staging_root() -> Path:
    """Where nodes stage outputs before a dataset publishes them: ``$XORON_STAGING_DIR`` (a
    ``kedro run`` sets it to ``data/.staging/<run>``, same filesystem as the outputs), else the
    system temp dir (library use outside a run)."""
    return Path(os.environ.get(STAGING_ENV) or tempfile.gettempdir())
