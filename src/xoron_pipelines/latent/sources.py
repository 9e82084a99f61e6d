"""Where the latent model's (source, target) pairs come from: seed 004's ``dataset_name`` and
its ``train_split`` / ``validation_split`` / ``test_split``.

``dataset_name`` is one of

* ``synth/<type>`` -- a partition of this project's synthetic data (catalog ``synth_raw``);
  the offline default is ``synth/dialogue_summary``;
* a local path: a Hugging Face ``save_to_disk`` directory, a ``.jsonl`` / ``.parquet`` file, or a
  folder of such files (``<split>.jsonl``, ``<split>.parquet`` or ``<split>-*.{jsonl,parquet}``
  name the splits; otherwise all its files are one source);
* a Hugging Face Hub id (e.g. ``knkarthick/samsum``), loaded with ``datasets.load_dataset``
  when online (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` unset).

A source with named splits yields ``{"train": rows, "val": rows, "test": rows}`` (``val`` and
``test`` only where ``validation_split`` / ``test_split`` exist): the cache keeps those splits,
and without a validation split the seeded ``preprocess_validation_fraction`` of the train rows
is drawn instead. A source without splits (``synth/<type>``, one file) yields its rows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from xoron_pipelines.datasets.jsonl import JSONLinesDataset

SYNTH_PREFIX = "synth/"
_SUFFIXES = (".jsonl", ".parquet")


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return list(JSONLinesDataset(str(path)).load())
    if path.suffix == ".parquet":
        return pq.read_table(str(path)).to_pylist()
    raise ValueError(f"latent.dataset_name: {path} is neither .jsonl nor .parquet")


def _pick(available: dict[str, Any], name: str, splits: tuple[str, str, str]) -> dict[str, Any]:
    """``{"train", "val", "test"}`` -> the named splits of ``available``; train is required."""
    train, validation, test = splits
    if train not in available:
        raise ValueError(f"latent.train_split={train!r} is not a split of {name} (it has {sorted(available)})")
    out = {"train": available[train]}
    if validation in available:
        out["val"] = available[validation]
    if test in available and test not in (train, validation):
        out["test"] = available[test]
    return out


def _folder_splits(folder: Path) -> dict[str, list[Path]]:
    """Split name -> files of a folder named ``<split>.<ext>`` or ``<split>-<anything>.<ext>``."""
    found: dict[str, list[Path]] = {}
    for f in sorted(folder.rglob("*")):
        if f.suffix in _SUFFIXES and f.is_file():
            m = re.match(r"^([A-Za-z0-9_]+?)(?:-.*)?$", f.stem)
            found.setdefault(m.group(1) if m else f.stem, []).append(f)
    return found


def _hf(ds: Any) -> Any:
    """A ``datasets`` Dataset -> rows; a DatasetDict (a dict) -> split name -> rows."""
    return {k: v.to_list() for k, v in ds.items()} if isinstance(ds, dict) else ds.to_list()


def pair_source(synth_raw: Any, dataset_name: str, splits: tuple[str, str, str]) -> Any:
    """The pairs named by ``dataset_name`` (see the module docstring); ``splits`` =
    (train_split, validation_split, test_split); ``synth_raw`` is the catalog's synth partitions
    (partition name -> loader), read only for ``synth/<type>``."""
    if dataset_name.startswith(SYNTH_PREFIX):
        part = dataset_name.removeprefix(SYNTH_PREFIX)
        if part not in synth_raw:
            raise ValueError(
                f"latent.dataset_name={dataset_name!r}: synth_raw has no partition {part!r} "
                f"(it has {sorted(synth_raw)}); run synth with that type enabled"
            )
        loaded = synth_raw[part]
        return list(loaded() if callable(loaded) else loaded)
    path = Path(dataset_name).expanduser()
    if path.is_file():
        return _read_file(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            import datasets

            loaded = _hf(datasets.load_from_disk(str(path)))
            return _pick(loaded, dataset_name, splits) if isinstance(loaded, dict) else loaded
        files = _folder_splits(path)
        if not files:
            raise ValueError(f"latent.dataset_name: {path} holds no .jsonl / .parquet files")
        if splits[0] in files:
            return _pick({k: [r for f in v for r in _read_file(f)] for k, v in files.items()}, dataset_name, splits)
        return [r for v in files.values() for f in v for r in _read_file(f)]
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise ValueError(
            f"latent.dataset_name={dataset_name!r} is not a local path and Hugging Face is offline "
            "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): use synth/<type>, a local file or folder, or go online"
        )
    import datasets

    loaded = _hf(datasets.load_dataset(dataset_name))
    return _pick(loaded, dataset_name, splits) if isinstance(loaded, dict) else loaded
