"""JSONLinesDataset: round trips, atomic writes, use inside PartitionedDataset and the catalog."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DataCatalog, DatasetError
from kedro_datasets.partitions import PartitionedDataset

from xoron_pipelines.datasets.jsonl import JSONLinesDataset

ROWS = [{"text": "héllo <|think|>", "n": 1, "nested": {"a": [1, 2]}}, {"text": "second", "n": 2, "nested": None}]


def test_round_trip_list_generator_and_dataframe(tmp_path):
    ds = JSONLinesDataset(str(tmp_path / "sub" / "rows.jsonl"))
    assert not ds.exists()
    ds.save(ROWS)
    assert ds.exists() and ds.load() == ROWS
    assert (tmp_path / "sub" / "rows.jsonl").read_text(encoding="utf-8").count("\n") == 2
    assert "héllo" in (tmp_path / "sub" / "rows.jsonl").read_text(encoding="utf-8")  # UTF-8, not escaped
    ds.save(row for row in ROWS[:1])
    assert ds.load() == ROWS[:1]
    ds.save(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    assert ds.load() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


def test_failed_save_leaves_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "rows.jsonl"
    ds = JSONLinesDataset(str(path))
    ds.save(ROWS)

    def broken():
        yield {"ok": 1}
        raise RuntimeError("boom")

    with pytest.raises(DatasetError):
        ds.save(broken())
    assert ds.load() == ROWS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_rejects_non_rows_and_reports_bad_lines(tmp_path):
    ds = JSONLinesDataset(str(tmp_path / "x.jsonl"))
    with pytest.raises(DatasetError, match="row 1 is a int"):
        ds.save([{"a": 1}, 5])
    with pytest.raises(DatasetError, match="single mapping"):
        ds.save({"a": 1})
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="bad.jsonl:2"):
        JSONLinesDataset(str(tmp_path / "bad.jsonl")).load()


def test_inside_partitioned_dataset_and_catalog(tmp_path):
    catalog = DataCatalog.from_config(
        {
            "parts": {
                "type": "partitions.PartitionedDataset",
                "path": str(tmp_path / "parts"),
                "dataset": {"type": "xoron_pipelines.datasets.jsonl.JSONLinesDataset"},
                "filename_suffix": ".jsonl",
            }
        }
    )
    catalog.save("parts", {"a": ROWS, "b": ROWS[:1]})
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["a.jsonl", "b.jsonl"]
    loaded = catalog.load("parts")
    assert {k: v() for k, v in loaded.items()} == {"a": ROWS, "b": ROWS[:1]}
    direct = PartitionedDataset(path=str(tmp_path / "parts"), dataset=JSONLinesDataset, filename_suffix=".jsonl")
    assert direct.load()["b"]() == ROWS[:1]
