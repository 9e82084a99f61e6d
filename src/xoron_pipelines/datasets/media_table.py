"""``MediaTableDataset``: a media table (:data:`xoron_pipelines.data.media.MEDIA_COLUMNS`, media as
bytes) in one Parquet file, replaced atomically.

``load`` -> a pandas DataFrame; ``save(df)`` writes the columns of ``MEDIA_COLUMNS`` with their
declared Arrow types (an empty table keeps its schema) followed by any extra columns (e.g. the
quarantine's ``reason``), to a sibling temporary file renamed over the target: a reader sees the
old table or the new one. With ``missing_ok`` a missing file loads as an empty table (the synth
media of a run that did not synthesise media).

Catalog use::

    synth_media_image:
      type: xoron_pipelines.datasets.media_table.MediaTableDataset
      filepath: data/01_raw/media/image.parquet
      missing_ok: true
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, DatasetError

from xoron_pipelines.atomic import atomic_file
from xoron_pipelines.data.media import MEDIA_COLUMNS

_ARROW = {"string": pa.string(), "binary": pa.binary(), "int64": pa.int64(), "float64": pa.float64()}
MEDIA_SCHEMA = pa.schema([(col, _ARROW[kind]) for col, kind in MEDIA_COLUMNS.items()])


def empty_table(extra: dict[str, str] | None = None) -> pd.DataFrame:
    """An empty media table with every column (plus ``extra`` ``{column: arrow type name}``)."""
    schema = MEDIA_SCHEMA
    for col, kind in (extra or {}).items():
        schema = schema.append(pa.field(col, _ARROW[kind]))
    return schema.empty_table().to_pandas()


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """``df`` as an Arrow table with the media columns' declared types; raises ``DatasetError``
    naming a missing media column."""
    missing = [c for c in MEDIA_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"media table lacks the columns {missing} (MEDIA_COLUMNS)")
    extras = [c for c in df.columns if c not in MEDIA_COLUMNS]
    inferred = pa.Table.from_pandas(df[extras], preserve_index=False).schema if extras else pa.schema([])
    fields = list(MEDIA_SCHEMA) + [
        pa.field(c, pa.string() if pd.api.types.is_string_dtype(df[c]) else inferred.field(c).type) for c in extras
    ]
    return pa.Table.from_pandas(df[[f.name for f in fields]], schema=pa.schema(fields), preserve_index=False)


class MediaTableDataset(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    def __init__(self, filepath: str, missing_ok: bool = False, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(str(filepath).removeprefix("file://"))
        self._missing_ok = missing_ok
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        if not self._path.is_file():
            if self._missing_ok:
                return empty_table()
            raise DatasetError(f"no media table at {self._path}")
        return pq.read_table(self._path).to_pandas()

    def save(self, data: pd.DataFrame) -> None:
        table = to_arrow(data)
        with atomic_file(self._path) as tmp:
            pq.write_table(table, tmp)

    def _exists(self) -> bool:
        return self._path.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._path)), "missing_ok": self._missing_ok}
