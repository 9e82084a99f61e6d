"""Training checkpoints: atomic, checksummed, pruned to the last K, optionally written in the background.

Layout of ``<root>/checkpoint-<step>/``::

    model.safetensors                       model.state_dict() (parameters and persistent buffers)
    optimizer.json + optimizer.safetensors  optimizer.state_dict()
    rng.json + rng.safetensors              Python / NumPy / torch CPU / CUDA generator states
    trainer_state.json                      scheduler, grad scaler, data position, counters, config
    manifest.json                           sha256 and size of every other file (written last)

No pickle anywhere: a state tree (nested dicts / lists / tuples of numbers, strings and tensors)
is stored as JSON in which each tensor is replaced by a reference ``{"__tensor__": key}`` into a
safetensors file (:func:`encode_tree` / :func:`decode_tree`). Tuples, non-string dict keys and
NumPy arrays are tagged so that decoding gives back the same Python structure.

A checkpoint is written into ``<root>/.tmp-checkpoint-<step>-<id>/``, every file and the
directory are fsync'ed, and the directory is renamed to its final name: a crash at any moment
leaves either the complete checkpoint or a temporary directory that the next writer removes.
:func:`latest_valid_checkpoint` verifies the manifest's checksums newest first and skips (and
logs, by path) any checkpoint that is corrupt or truncated.

A training configuration's checkpoints live in ``<root>/<name>/<fingerprint>/``
(:func:`configuration_dir`, shared by the pipeline stages and the latent stages); the
``keep_configurations`` most recently used configurations of ``<name>`` are kept, older ones are
removed with a log line naming each. Checkpoints a run does not resume from (``never``, an
explicit earlier checkpoint, a lowered ``max_steps``) are moved into
``<fingerprint>/superseded-<time>/`` by :func:`set_aside`, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from xoron_pipelines.atomic import atomic_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
TREES = ("optimizer", "rng", "trainer_state")
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"
_TRASH_PREFIX = ".trash-checkpoint-"  # written by earlier versions; still cleaned up


class CorruptCheckpointError(RuntimeError):
    """A checkpoint's files do not match its manifest (or the manifest is missing / unreadable)."""


# ------------------------------------------------------------------------------ state trees
def encode_tree(obj: Any, tensors: dict[str, torch.Tensor], path: str = "t") -> Any:
    """JSON-able copy of ``obj``; tensors are cloned to CPU into ``tensors`` (a snapshot)."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_tree(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {
            "__items__": [
                [encode_tree(k, tensors, f"{path}.k{i}"), encode_tree(v, tensors, f"{path}.{i}")]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint (not a tensor/number/string)")


def decode_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_tree`."""
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(decode_tree(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_tree(v, tensors) for k, v in obj.items()}


@dataclass
class Snapshot:
    """Everything a checkpoint holds, already copied to CPU (safe to write from another thread)."""

    step: int
    model: dict[str, torch.Tensor]
    trees: dict[str, tuple[Any, dict[str, torch.Tensor]]] = field(default_factory=dict)

    @classmethod
    def take(cls, step: int, model_state: dict[str, torch.Tensor], **trees: Any) -> Snapshot:
        """Copy ``model_state`` and encode each named state tree (``optimizer=...``, ``rng=...``)."""
        model = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model_state.items()}
        encoded = {}
        for name, tree in trees.items():
            tensors: dict[str, torch.Tensor] = {}
            encoded[name] = (encode_tree(tree, tensors), tensors)
        return cls(step, model, encoded)


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor]
    trees: dict[str, Any]


# ------------------------------------------------------------------------------ writing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True))


def _write_files(tmp: Path, snap: Snapshot) -> list[str]:
    """Write the snapshot's files into ``tmp``; return their names."""
    save_file(snap.model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    names = [MODEL_FILE]
    for name, (tree, tensors) in snap.trees.items():
        _write_json(tmp / f"{name}.json", tree)
        names.append(f"{name}.json")
        if tensors:
            save_file(tensors, str(tmp / f"{name}.safetensors"))
            names.append(f"{name}.safetensors")
    return names


def write_checkpoint(root: str | os.PathLike, snap: Snapshot) -> Path:
    """Write ``snap`` atomically as ``root/checkpoint-<step>`` (replacing one of the same step)."""
    root = Path(root)
    final = root / f"checkpoint-{snap.step}"
    # built as root/.tmp-checkpoint-<step>-*, then swapped in (an old checkpoint of this step, e.g.
    # a corrupt one of a crashed run, goes out with the staging dir); files fsynced before the swap
    with atomic_dir(final, prefix=f"{_TMP_PREFIX}{snap.step}-") as tmp:
        files = {}
        for name in _write_files(tmp, snap):
            _fsync_file(tmp / name)
            files[name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        _write_json(tmp / MANIFEST, {"format_version": FORMAT_VERSION, "step": snap.step, "files": files})
        _fsync_file(tmp / MANIFEST)
        _fsync_file(tmp)
    _fsync_file(root)
    log.info("saved checkpoint %s", final)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-<step>`` directory under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def prune_checkpoints(root: str | os.PathLike, keep_last_k: int) -> list[Path]:
    """Delete all but the ``keep_last_k`` newest checkpoints; return the deleted paths."""
    doomed = [p for _, p in list_checkpoints(root)[:-keep_last_k]] if keep_last_k > 0 else []
    for p in doomed:
        shutil.rmtree(p)
        log.info("removed old checkpoint %s (keep_last_k=%d)", p, keep_last_k)
    return doomed


def remove_stale_temporaries(root: str | os.PathLike) -> list[Path]:
    """Remove temporary / trash directories a killed writer left behind."""
    root = Path(root)
    stale = (
        [p for p in root.glob(".*-checkpoint-*") if p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX))]
        if root.is_dir()
        else []
    )
    for p in stale:
        log.warning("removing incomplete checkpoint directory %s left by an interrupted save", p)
        shutil.rmtree(p, ignore_errors=True)
    return stale


def set_aside(root: str | os.PathLike, after_step: int, reason: str) -> Path | None:
    """Move the checkpoints of ``root`` newer than ``after_step`` into ``root/superseded-<time>/``
    (ignored by resume and pruning, removed only with their configuration); returns that folder."""
    moving = [p for s, p in list_checkpoints(root) if s > after_step]
    if not moving:
        return None
    dest = Path(root) / f"superseded-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    dest.mkdir()
    for p in moving:
        os.replace(p, dest / p.name)
    log.warning("%s: moved %s to %s (kept, not resumed from)", reason, [p.name for p in moving], dest)
    return dest


def configuration_dir(root: str | os.PathLike, name: str, fingerprint: str, keep_configurations: int | None) -> Path:
    """``<root>/<name>/<fingerprint>`` (created, marked as the most recently used configuration).

    With ``keep_configurations`` = N the N most recently used configuration directories of
    ``name`` (this one included) are kept and the older ones removed; both lists are logged.
    ``None`` removes nothing (e.g. a node other than node 0 of a multi-node stage)."""
    parent = Path(root) / name
    current = parent / fingerprint
    current.mkdir(parents=True, exist_ok=True)
    os.utime(current)  # recency = last use
    if keep_configurations is None:
        return current
    others = sorted(
        (p for p in parent.iterdir() if p.is_dir() and p != current), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    kept, removed = others[: keep_configurations - 1], others[keep_configurations - 1 :]
    if removed:
        log.warning(
            "%s: keep_configurations=%d: keeping the checkpoints of %s (current first), removing those "
            "of earlier configurations %s",
            name,
            keep_configurations,
            [current.name, *(p.name for p in kept)],
            [str(p) for p in removed],
        )
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
    elif kept:
        log.info(
            "%s: checkpoints of earlier configurations kept (keep_configurations=%d): %s",
            name,
            keep_configurations,
            [p.name for p in kept],
        )
    return current


# ------------------------------------------------------------------------------ verification / loading
def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """``None`` when every file matches the manifest, else the reason it does not."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"{MANIFEST} is missing"
    except (ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({exc.__class__.__name__}: {exc})"
    missing = [n for n in (MODEL_FILE, "trainer_state.json") if n not in files]
    if missing:
        return f"{MANIFEST} does not list {missing}"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != meta["bytes"]:
            return f"{name} has {size} bytes, the manifest says {meta['bytes']} (truncated?)"
        if _sha256(f) != meta["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step recorded in a checkpoint's manifest."""
    return int(json.loads((Path(path) / MANIFEST).read_text())["step"])


def latest_valid_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint under ``root`` whose checksums verify; corrupt ones are logged and skipped."""
    for _step, path in reversed(list_checkpoints(root)):
        reason = verify_checkpoint(path)
        if reason is None:
            return path
        log.error("corrupt checkpoint %s: %s; falling back to the previous checkpoint", path, reason)
    return None


def quarantine_after(root: str | os.PathLike, step: int) -> list[Path]:
    """Rename checkpoints newer than ``step`` (the corrupt ones resume skipped) to ``corrupt-checkpoint-*``
    so that pruning and later resumes ignore them; they are kept for inspection."""
    moved = []
    for s, path in list_checkpoints(root):
        if s > step:
            dest = path.with_name(f"corrupt-{path.name}-{uuid.uuid4().hex[:8]}")
            os.replace(path, dest)
            log.warning("moved corrupt checkpoint %s to %s", path, dest)
            moved.append(dest)
    return moved


#: the state trees whose tensors go to the training device on load (the others -- RNG states,
#: trainer state -- stay on the CPU, where torch's generator setters want them)
DEVICE_TREES = ("optimizer",)


def load_checkpoint(
    path: str | os.PathLike, verify: bool = True, map_location: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """Read a checkpoint (after checking it against its manifest unless ``verify=False``).

    Checkpoints are device-neutral (every tensor is written from the CPU): the model weights and
    the optimizer state are loaded onto ``map_location`` (the device that resumes, whatever device
    wrote them), the RNG states and the trainer state onto the CPU."""
    path = Path(path)
    if verify and (reason := verify_checkpoint(path)) is not None:
        raise CorruptCheckpointError(f"corrupt checkpoint {path}: {reason}")
    manifest = json.loads((path / MANIFEST).read_text())
    device = str(torch.device(map_location))
    trees = {}
    for name in TREES:
        if (path / f"{name}.json").exists():
            tensor_file = path / f"{name}.safetensors"
            where = device if name in DEVICE_TREES else "cpu"
            tensors = load_file(str(tensor_file), device=where) if tensor_file.exists() else {}
            trees[name] = decode_tree(json.loads((path / f"{name}.json").read_text()), tensors)
    return LoadedCheckpoint(path, int(manifest["step"]), load_file(str(path / MODEL_FILE), device=device), trees)


# ------------------------------------------------------------------------------ (a)synchronous writer
class CheckpointWriter:
    """Writes snapshots (synchronously, or on one background thread) and prunes to the last K.

    In asynchronous mode :meth:`save` returns as soon as the previous save has finished and the new
    one is queued; the training loop keeps running on the live tensors while the thread writes the
    CPU snapshot. :meth:`wait` joins the pending save and re-raises its error, if any.
    """

    def __init__(self, root: str | os.PathLike, keep_last_k: int, asynchronous: bool = False) -> None:
        self.root = Path(root)
        self.keep_last_k = keep_last_k
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.root)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer") if asynchronous else None
        self._pending: Future | None = None
        self.last_path: Path | None = None

    def _write(self, snap: Snapshot) -> Path:
        path = write_checkpoint(self.root, snap)
        prune_checkpoints(self.root, self.keep_last_k)
        self.last_path = path
        return path

    def save(self, snap: Snapshot) -> None:
        self.wait()
        if self._pool is None:
            self._write(snap)
        else:
            self._pending = self._pool.submit(self._write, snap)

    def wait(self) -> Path | None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        return self.last_path

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
