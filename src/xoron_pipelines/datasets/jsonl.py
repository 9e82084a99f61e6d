"""``JSONLinesDataset``: a list of JSON objects, one per line, written atomically.

Catalog use::

    my_rows:
      type: xoron_pipelines.datasets.jsonl.JSONLinesDataset
      filepath: data/01_raw/rows.jsonl

It also works as the ``dataset`` of a ``partitions.PartitionedDataset`` (one file per partition).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_open


class JSONLinesDataset(AbstractDataset[Iterable[Mapping[str, Any]], list[dict[str, Any]]]):
    """Rows (dicts) stored as JSON Lines on the local filesystem.

    ``save`` streams any iterable of dicts (or a pandas ``DataFrame``, row by row) into a
    temporary file in the target directory and then ``os.replace``-s it over the target, so a
    reader never sees a half-written file. Any string can be saved: lone surrogates are written
    as ``\\uNNNN`` escapes and load back unchanged. ``load`` returns the rows as a list of dicts.
    """

    def __init__(
        self,
        filepath: str,
        ensure_ascii: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            filepath: path of the ``.jsonl`` file (a ``file://`` prefix is accepted).
            ensure_ascii: escape non-ASCII characters when writing (default: write UTF-8).
            metadata: free-form metadata, ignored by the dataset (Kedro convention).
        """
        self._filepath = Path(str(filepath).removeprefix("file://"))
        self._ensure_ascii = ensure_ascii
        self.metadata = metadata

    def load(self) -> list[dict[str, Any]]:
        rows = []
        with self._filepath.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{self._filepath}:{lineno}: invalid JSON ({exc.msg})") from exc
        return rows

    def save(self, data: Iterable[Mapping[str, Any]]) -> None:
        rows = _iter_rows(data)
        # A lone surrogate (a "\ud800" JSON escape, an undecodable file name) cannot be encoded as
        # UTF-8: it is written as its JSON escape, which loads back to the same string.
        with atomic_open(self._filepath, errors="backslashreplace") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=self._ensure_ascii, default=_to_builtin))
                fh.write("\n")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._filepath)), "ensure_ascii": self._ensure_ascii}


def _iter_rows(data: Any) -> Iterable[Mapping[str, Any]]:
    """Rows of ``data``: a DataFrame's records, or the items of any iterable of mappings."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        return (dict(zip(data.columns, values)) for values in data.itertuples(index=False, name=None))
    if isinstance(data, Mapping):
        raise DatasetError("JSONLinesDataset.save expects an iterable of rows (dicts), got a single mapping")
    return _checked(data)


def _to_builtin(value: Any) -> Any:
    """JSON fallback for numpy/pandas scalars and arrays (``.item()`` / ``.tolist()``)."""
    for method in ("tolist", "item"):
        if hasattr(value, method):
            return getattr(value, method)()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _checked(rows: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DatasetError(f"JSONLinesDataset row {i} is a {type(row).__name__}, expected a dict")
        yield row
