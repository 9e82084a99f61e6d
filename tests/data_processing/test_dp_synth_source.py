"""``format: synth`` sources: data_processing reads the synth pipeline's output through the
catalog dataset ``synth_raw`` (kedro viz shows the edge; --from-nodes / --to-nodes follow it),
with the same records as reading the partition files by path."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from tests.data_processing.dp_helpers import make_params
from xoron_pipelines.data.ledger import build_ledger
from xoron_pipelines.datasets.partitions import LabelledPartitionedDataset
from xoron_pipelines.pipelines.data_processing.pipeline import create_pipeline
from xoron_pipelines.synth import generate_type
from xoron_pipelines.validation import ParameterError, validate_group

COLUMNS = ["source", "file", "row", "status", "reason", "detail", "raw", "text"]


def _synth_raw(tmp_path):
    """The synth_raw catalog entry (conf/base/catalog.yml) at tmp_path: saved, then loaded."""
    dataset = LabelledPartitionedDataset(
        path=str(tmp_path / "synth"),
        dataset="xoron_pipelines.datasets.jsonl.JSONLinesDataset",
        filename_suffix=".jsonl",
        overwrite=True,
    )
    rows = {kind: generate_type(kind, 12, 3, {"easy": 1.0, "hard": 1.0}) for kind in ("chat", "fim")}
    rows["chat"] += rows["chat"][:3]  # exact duplicates: deduplicated the same way
    dataset.save(rows)
    return dataset.load()


def _source(kind: str, **fields):
    return {
        "name": f"synth_{kind}",
        "text_field": "text",
        "messages_field": "messages",
        "category": "conversation",
        **fields,
    }


def _records(ledger) -> list[dict]:
    table = ledger.dataset().to_table()
    return table.select([c for c in COLUMNS if c in table.column_names]).to_pylist()


def test_synth_sources_read_through_the_dataset_match_reading_the_files(tmp_path, monkeypatch):
    synth_raw = _synth_raw(tmp_path)
    by_dataset = [_source(k, path=k, format="synth") for k in ("chat", "fim")]
    by_path = [_source(k, path=str(tmp_path / "synth" / f"{k}.jsonl"), format="jsonl") for k in ("chat", "fim")]
    params = dict(cleaning={"min_chars": 1})
    through_catalog = build_ledger(make_params(by_dataset, **params), synth=synth_raw)
    from_files = build_ledger(make_params(by_path, **params))
    assert _records(through_catalog) == _records(from_files)
    assert through_catalog.dataset().count_rows(filter=pc.field("status") == "kept") == 24
    files = set(through_catalog.dataset().to_table(columns=["file"]).column("file").to_pylist())
    assert files == {str(tmp_path / "synth" / "chat.jsonl"), str(tmp_path / "synth" / "fim.jsonl")}

    # in the project root (as Kedro runs), files are named relative to it, like a jsonl source's path
    monkeypatch.chdir(tmp_path)
    assert {k: p.file for k, p in _synth_raw(tmp_path).items()} == {
        "chat": "synth/chat.jsonl",
        "fim": "synth/fim.jsonl",
    }

    # rows handed over in memory (synth_raw as a MemoryDataset): same records, labelled by type
    in_memory = build_ledger(make_params(by_dataset, **params), synth={k: load() for k, load in synth_raw.items()})
    strip = lambda records: [{k: v for k, v in r.items() if k != "file"} for r in records]  # noqa: E731
    assert strip(_records(in_memory)) == strip(_records(from_files))
    assert {r["file"] for r in _records(in_memory)} == {"synth_raw/chat", "synth_raw/fim"}


def test_a_missing_partition_or_type_is_refused_before_any_work(tmp_path):
    synth_raw = _synth_raw(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'synth_git_diff'.*no partition 'git_diff'.*synth.counts.git_diff"):
        build_ledger(
            make_params(
                [_source("chat", path="chat", format="synth"), _source("git_diff", path="git_diff", format="synth")]
            ),
            synth=synth_raw,
        )
    with pytest.raises(ParameterError, match="a synth source's path is a synthetic type"):
        validate_group(
            "data_processing", {"sources": [_source("x", path="data/01_raw/synth/chat.jsonl", format="synth")]}
        )


def test_the_ledger_node_takes_the_synth_partitions_from_the_catalog():
    [ledger_node] = [n for n in create_pipeline().nodes if n.name == "build_record_ledger"]
    assert ledger_node.inputs == ["params:data_processing", "synth_raw"]


def test_a_bad_line_in_a_synth_partition_quarantines_that_line_only(tmp_path):
    synth_raw = _synth_raw(tmp_path)
    chat = tmp_path / "synth" / "chat.jsonl"
    lines = chat.read_text(encoding="utf-8").splitlines()
    lines.insert(4, '{"messages": [truncated')
    chat.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ledger = build_ledger(
        make_params([_source("chat", path="chat", format="synth")], cleaning={"min_chars": 1}), synth=synth_raw
    )
    records = _records(ledger)
    bad = [r for r in records if r["status"] == "quarantined"]
    assert [(r["row"], r["reason"]) for r in bad] == [(5, "malformed_json")]
    assert len(records) == len(lines) and sum(r["status"] == "kept" for r in records) == 12
