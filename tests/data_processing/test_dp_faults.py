"""Per-record and per-file fault isolation in data_processing: each hostile input is quarantined
with its source, file, line / row and reason, the records around it are kept, and the run goes
on. Every test goes through the pipeline's nodes (``build_ledger`` -> ``report_records`` -> the
quarantine file written and read back by ``JSONLinesDataset``) and checks that the counts
reconcile (records in = kept + quarantined + filtered = ledger rows; quarantined = quarantine file)."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dp_helpers import jsonl_source, prose_docs

from xoron_pipelines.data.ledger import BadRecordError
from xoron_pipelines.data.sources import RAW_SNIPPET
from xoron_pipelines.datasets.jsonl import JSONLinesDataset
from xoron_pipelines.pipelines.data_processing import nodes

NO_DEDUP = {"exact": False, "near_dup": False}


@dataclass
class Run:
    rows: list[dict[str, Any]]  # the ledger
    quarantine: list[dict[str, Any]]  # quarantine.jsonl, read back
    metrics: dict[str, float]

    def kept(self) -> list[tuple[str, int, str]]:
        return [(r["file"], r["row"], r["text"]) for r in self.rows if r["status"] == "kept"]

    def quarantined(self) -> list[tuple[str, int | None, str]]:
        return [(r["file"], r["row"], r["reason"]) for r in self.quarantine]

    def entry(self, row: int | None, reason: str | None = None) -> dict[str, Any]:
        """The quarantine entry at ``row`` (with ``reason``, when rows of several files collide)."""
        (hit,) = [r for r in self.quarantine if r["row"] == row and reason in (None, r["reason"])]
        return hit

    def detail(self, row: int | None, reason: str | None = None) -> str:
        return self.entry(row, reason)["detail"]

    def raw(self, row: int | None, reason: str | None = None) -> str:
        return self.entry(row, reason)["raw"]


def run_nodes(tmp_path: Path, sources: list[dict[str, Any]], **overrides: Any) -> Run:
    params = {"sources": sources, "progress": False, "dedup": NO_DEDUP, **overrides}
    ledger = nodes.build_ledger(params)
    quarantine, table, metrics = nodes.report_records(ledger)
    out = JSONLinesDataset(str(tmp_path / "quarantine.jsonl"))
    out.save(quarantine)
    run = Run(ledger.read().to_pylist(), out.load(), {k: v["value"] for k, v in metrics.items()})
    m = run.metrics
    assert m["records.in"] == len(run.rows) == table["count"].sum()
    assert m["records.in"] == m["records.kept"] + m["records.quarantined"] + m["records.filtered"]
    assert m["records.quarantined"] == len(run.quarantine)
    return run


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


DOCS = prose_docs(12, seed=5)


def test_json_past_the_parser_limits_is_quarantined_and_the_run_goes_on(tmp_path: Path):
    """Nesting deeper than the parser's recursion limit (RecursionError) and an integer literal
    past Python's digit limit (ValueError) are bad records, not a dead run."""
    deep_list = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    deep_obj = b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"\n"
    big_int = b'{"text": "fine", "n": ' + b"7" * 5000 + b"}\n"
    jl = tmp_path / "deep.jsonl"
    jl.write_bytes(line({"text": DOCS[0]}) + deep_list + deep_obj + line({"text": DOCS[1]}) + big_int)
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a_deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    (tmp_path / "j" / "b_ok.json").write_text(json.dumps([{"text": DOCS[2]}]))
    run = run_nodes(
        tmp_path,
        [
            jsonl_source(jl, name="jl"),
            {"name": "js", "path": str(tmp_path / "j"), "format": "json", "text_field": "text", "category": "document"},
        ],
        cleaning={"max_record_bytes": 1_000_000},
    )
    deep_json = str(tmp_path / "j" / "a_deep.json")
    assert run.quarantined() == [
        (str(jl), 2, "malformed_json"),
        (str(jl), 3, "malformed_json"),
        (str(jl), 5, "malformed_json"),
        (deep_json, None, "malformed_json"),
    ]
    assert [run.detail(row) for row in (2, 3, None)] == ["nested too deeply to parse"] * 3
    assert "Exceeds the limit (4300 digits)" in run.detail(5)
    assert run.raw(2).startswith('{"text": [[[') and run.raw(2).endswith(f"[cut, {len(deep_list)} characters in all]")
    assert run.kept() == [(str(jl), 1, DOCS[0]), (str(jl), 4, DOCS[1]), (str(tmp_path / "j" / "b_ok.json"), 0, DOCS[2])]
    assert run.metrics["quarantined.malformed_json"] == 4


def test_invalid_utf8_lone_surrogates_and_nul_never_break_the_ledger_or_quarantine(tmp_path: Path):
    """An undecodable file name, invalid bytes, lone surrogates in kept and quarantined records,
    a surrogate in a chat role and a NUL: all written, all readable, each with its own line."""
    folder = tmp_path / "src"
    folder.mkdir()
    name = os.fsencode(folder) + b"/caf\xe9.jsonl"  # not UTF-8: Python sees "caf\udce9.jsonl"
    with open(name, "wb") as fh:
        fh.write(line({"text": DOCS[0]}))
        fh.write(b'{"text": "bad \xff\xfe bytes"}\n')  # 2
        fh.write(b'{"text": 5, "note": "\\ud800 lone"}\n')  # 3: quarantined, raw holds a surrogate
        fh.write(b'{"text": "kept \\ud83d despite a lone surrogate in it"}\n')  # 4: kept, surrogate dropped
        fh.write(b'{"messages": [{"role": "\\udcff", "content": "hi"}]}\n')  # 5: bad role
        fh.write(b'{"text": "a raw NUL \x00 is not JSON"}\n')  # 6: kept byte for byte in raw
        fh.write(line({"text": DOCS[1]}))  # 7
    run = run_nodes(tmp_path, [jsonl_source(folder, messages_field="messages")])
    file = str(folder / "caf\\udce9.jsonl")  # the file name spelled printably
    assert run.quarantined() == [
        (file, 2, "invalid_utf8"),
        (file, 3, "non_string_text"),
        (file, 5, "bad_messages"),
        (file, 6, "malformed_json"),
    ]
    assert "\\xff\\xfe" in run.raw(2) and "0xff" in run.detail(2)
    assert "\\ud800 lone" in run.raw(3)
    assert "\\udcff" in run.raw(5)
    assert run.raw(6) == '{"text": "a raw NUL \x00 is not JSON"}\n'
    assert run.kept() == [(file, 1, DOCS[0]), (file, 4, "kept  despite a lone surrogate in it"), (file, 7, DOCS[1])]


def test_a_byte_order_mark_does_not_cost_the_first_record(tmp_path: Path):
    bom = b"\xef\xbb\xbf"
    jl = tmp_path / "bom.jsonl"
    jl.write_bytes(bom + line({"text": DOCS[0]}) + line({"text": DOCS[1]}) + bom + line({"text": DOCS[2]}))
    js = tmp_path / "bom.json"
    js.write_bytes(bom + json.dumps([{"text": DOCS[3]}]).encode())
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_bytes(bom + DOCS[4].encode())
    run = run_nodes(
        tmp_path,
        [
            jsonl_source(jl, name="jl"),
            {"name": "js", "path": str(js), "format": "json", "text_field": "text", "category": "document"},
            {
                "name": "tx",
                "path": str(tmp_path / "txt"),
                "format": "text",
                "text_field": "text",
                "category": "document",
            },
        ],
    )
    assert run.kept() == [
        (str(jl), 1, DOCS[0]),
        (str(jl), 2, DOCS[1]),
        (str(js), 0, DOCS[3]),
        (str(tmp_path / "txt" / "a.txt"), 0, DOCS[4]),
    ]
    # only a file's first bytes are a byte order mark (as utf-8-sig reads it); one mid-file is bad JSON
    assert run.quarantined() == [(str(jl), 3, "malformed_json")]
    assert "BOM" in run.detail(3)


def test_non_objects_wrong_types_and_templates_that_do_not_apply(tmp_path: Path):
    jl = tmp_path / "types.jsonl"
    values = [
        {"text": DOCS[0]},
        [1, 2],
        "a string",
        42,
        None,
        {"text": ["a"]},
        {"text": {"a": 1}},
        {"text": True},
        {"text": [[[["nested"]]]]},
        {"messages": "hi"},
        {"text": DOCS[1]},
    ]
    jl.write_bytes(b"".join(line(v) for v in values))
    tp = tmp_path / "template.jsonl"
    rows = [{"n": 3, "name": DOCS[2]}, {"n": "x", "name": DOCS[3]}, {"n": [1], "name": DOCS[4]}, {"name": DOCS[5]}]
    tp.write_bytes(b"".join(line(v) for v in rows))
    run = run_nodes(
        tmp_path,
        [
            jsonl_source(jl, name="jl", messages_field="messages"),
            {
                "name": "tp",
                "path": str(tp),
                "format": "jsonl",
                "text_template": "Item {n:d}: {name}",
                "category": "document",
            },
        ],
    )
    reasons = ["not_an_object"] * 4 + ["non_string_text"] * 4 + ["bad_messages"]
    assert run.quarantined() == [(str(jl), i, r) for i, r in enumerate(reasons, start=2)] + [
        (str(tp), 2, "template_error"),
        (str(tp), 3, "non_string_text"),
        (str(tp), 4, "missing_field"),
    ]
    assert "row is a list" in run.detail(2, "not_an_object") and run.raw(2, "not_an_object") == "[1, 2]"
    assert "{n:d}" in run.detail(2, "template_error") and "ValueError" in run.detail(2, "template_error")
    assert run.kept() == [(str(jl), 1, DOCS[0]), (str(jl), 11, DOCS[1]), (str(tp), 1, f"Item 3: {DOCS[2]}")]
    assert run.metrics["quarantined.not_an_object"] == 4 and run.metrics["quarantined.template_error"] == 1


def test_any_other_extraction_error_costs_only_its_record(tmp_path: Path):
    """The last guard: a template whose nested format field (``{w}`` inside ``{name:>{w}}``) a
    row lacks raises KeyError while formatting; that row is quarantined as ``record_error``."""
    path = tmp_path / "t.jsonl"
    path.write_bytes(line({"name": DOCS[0], "w": 3}) + line({"name": DOCS[1]}) + line({"name": DOCS[2], "w": 1}))
    run = run_nodes(
        tmp_path,
        [{"name": "t", "path": str(path), "format": "jsonl", "text_template": "{name:>{w}}", "category": "document"}],
    )
    assert run.quarantined() == [(str(path), 2, "record_error")]
    assert run.detail(2) == "KeyError: 'w'" and run.raw(2).startswith(json.dumps({"name": DOCS[1]})[:100])
    assert run.kept() == [(str(path), 1, DOCS[0]), (str(path), 3, DOCS[2])]


def test_huge_lines_are_cut_in_the_quarantine_and_reading_resumes(tmp_path: Path):
    huge = b'{"text": "' + b"x" * 200_000 + b'"}\n'
    tail = b'{"text": "' + "é".encode() * 50_000 + b'"}'  # the last line, no newline
    jl = tmp_path / "huge.jsonl"
    jl.write_bytes(line({"text": DOCS[0]}) + huge + line({"text": DOCS[1]}) + tail)
    (tmp_path / "txt").mkdir()
    big_text = tmp_path / "txt" / "a_big.txt"
    big_text.write_bytes(b"z" * 300_000)
    (tmp_path / "txt" / "b.txt").write_text(DOCS[2])
    run = run_nodes(
        tmp_path,
        [
            jsonl_source(jl),
            {
                "name": "tx",
                "path": str(tmp_path / "txt"),
                "format": "text",
                "text_field": "text",
                "category": "document",
            },
        ],
        cleaning={"max_record_bytes": 1000},
    )
    assert run.quarantined() == [(str(jl), 2, "oversized"), (str(jl), 4, "oversized"), (str(big_text), 0, "oversized")]
    assert run.detail(0) == "300000 bytes > 1000" and run.raw(0).endswith("...[cut, 300000 bytes in all]")
    assert run.detail(2) == f"{len(huge)} bytes > 1000" and run.detail(4) == f"{len(tail)} bytes > 1000"
    for row, size in ((2, len(huge)), (4, len(tail))):
        raw = run.raw(row)
        assert raw.endswith(f"...[cut, {size} bytes in all]")
        assert raw.startswith('{"text": "') and len(raw) <= RAW_SNIPPET + 40
    assert run.kept() == [(str(jl), 1, DOCS[0]), (str(jl), 3, DOCS[1]), (str(tmp_path / "txt" / "b.txt"), 0, DOCS[2])]


def test_unreadable_files_and_directories_are_quarantined_per_file(tmp_path: Path, monkeypatch):
    """A broken symlink, a file that may not be opened and a directory that may not be listed
    (injected: the tests may run as root, which ignores permission bits): one entry each."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.jsonl").write_bytes(line({"text": DOCS[0]}))
    (root / "b.jsonl").symlink_to(tmp_path / "gone.jsonl")
    (root / "c.jsonl").write_bytes(line({"text": "never read"}))
    (root / "d.jsonl").write_bytes(line({"text": DOCS[1]}))
    (root / "sub" / "e.jsonl").write_bytes(line({"text": "in a directory that cannot be listed"}))
    real_open, real_scandir = pathlib.Path.open, os.scandir

    def open_(self, *args, **kwargs):
        if self.name == "c.jsonl":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    def scandir(path="."):
        if os.fspath(path) == str(root / "sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(pathlib.Path, "open", open_)
    monkeypatch.setattr(os, "scandir", scandir)
    run = run_nodes(tmp_path, [jsonl_source(root)])
    assert run.quarantined() == [(str(root / name), None, "unreadable_file") for name in ("sub", "b.jsonl", "c.jsonl")]
    details = [r["detail"] for r in run.quarantine]
    assert details[0].startswith("directory not listed: PermissionError")
    assert details[1].startswith("file could not be read: FileNotFoundError")
    assert details[2].startswith("file could not be read: PermissionError")
    assert run.kept() == [(str(root / "a.jsonl"), 1, DOCS[0]), (str(root / "d.jsonl"), 1, DOCS[1])]
    assert run.metrics["quarantined.unreadable_file"] == 3


def test_a_read_error_mid_file_quarantines_the_rest_and_the_next_file_is_read(tmp_path: Path, monkeypatch):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.jsonl").write_bytes(line({"text": DOCS[0]}) + line({"text": DOCS[1]}) + line({"text": DOCS[2]}))
    (root / "b.jsonl").write_bytes(line({"text": DOCS[3]}))
    from xoron_pipelines.data import sources

    real_lines = sources._lines

    def failing(fh, limit):  # an I/O error (a bad disk sector) after the second line of a.jsonl
        for i, item in enumerate(real_lines(fh, limit)):
            if i == 2 and fh.name.endswith("a.jsonl"):
                raise OSError(5, "Input/output error")
            yield item

    monkeypatch.setattr(sources, "_lines", failing)
    run = run_nodes(tmp_path, [jsonl_source(root)])
    assert run.quarantined() == [(str(root / "a.jsonl"), 3, "unreadable_file")]
    assert run.detail(3).startswith("reading stopped after row 2: OSError")
    assert run.kept() == [
        (str(root / "a.jsonl"), 1, DOCS[0]),
        (str(root / "a.jsonl"), 2, DOCS[1]),
        (str(root / "b.jsonl"), 1, DOCS[3]),
    ]


def parquet_docs(path: Path, n: int, row_group_size: int) -> list[str]:
    texts = [f"Parquet row {i}: " + DOCS[i % len(DOCS)] for i in range(n)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=row_group_size)
    return texts


def test_truncated_and_empty_parquet_files_are_quarantined_per_file(tmp_path: Path):
    root = tmp_path / "pq"
    root.mkdir()
    texts = parquet_docs(root / "a_good.parquet", 5, 5)
    parquet_docs(tmp_path / "full.parquet", 40, 10)
    whole = (tmp_path / "full.parquet").read_bytes()
    (root / "b_truncated.parquet").write_bytes(whole[: len(whole) // 2])
    (root / "c_empty.parquet").write_bytes(b"")
    run = run_nodes(
        tmp_path, [{"name": "p", "path": str(root), "format": "parquet", "text_field": "text", "category": "document"}]
    )
    assert run.quarantined() == [
        (str(root / "b_truncated.parquet"), None, "unreadable_file"),
        (str(root / "c_empty.parquet"), None, "unreadable_file"),
    ]
    assert all("file could not be read: ArrowInvalid" in r["detail"] for r in run.quarantine)
    assert run.kept() == [(str(root / "a_good.parquet"), i, t) for i, t in enumerate(texts)]


def test_a_corrupt_row_group_is_quarantined_and_later_groups_keep_their_rows(tmp_path: Path):
    path = tmp_path / "groups.parquet"
    texts = parquet_docs(path, 50, 10)
    column = pq.ParquetFile(path).metadata.row_group(2).column(0)
    offset = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16  # the first page header of row group 2
    path.write_bytes(bytes(data))
    run = run_nodes(
        tmp_path, [{"name": "p", "path": str(path), "format": "parquet", "text_field": "text", "category": "document"}]
    )
    assert run.quarantined() == [(str(path), 20, "corrupt_row_group")]
    assert run.detail(20).startswith("row group 2 (rows 20-29): rows 20-29 unreadable: OSError")
    assert run.kept() == [(str(path), i, texts[i]) for i in [*range(20), *range(30, 50)]]
    assert run.metrics["quarantined.corrupt_row_group"] == 1


def test_a_parquet_row_python_cannot_hold_is_quarantined_alone(tmp_path: Path):
    path = tmp_path / "when.parquet"
    texts = [f"Parquet row {i}: " + DOCS[i] for i in range(6)]
    stamps = pa.array([0, 1, 2, 10**12, 4, 5], pa.timestamp("s"))  # row 3 is past year 9999
    pq.write_table(pa.table({"text": texts, "when": stamps}), path)
    run = run_nodes(
        tmp_path, [{"name": "p", "path": str(path), "format": "parquet", "text_field": "text", "category": "document"}]
    )
    assert run.quarantined() == [(str(path), 3, "record_error")]
    assert run.detail(3).startswith("row not convertible: OverflowError")
    assert run.kept() == [(str(path), i, texts[i]) for i in (0, 1, 2, 4, 5)]


def test_a_corrupt_hf_dataset_is_quarantined_and_other_sources_kept(tmp_path: Path):
    import datasets

    datasets.Dataset.from_list([{"text": d} for d in DOCS[:3]]).save_to_disk(str(tmp_path / "disk"))
    (arrow,) = (tmp_path / "disk").glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:200])
    jl = tmp_path / "ok.jsonl"
    jl.write_bytes(line({"text": DOCS[4]}))
    run = run_nodes(
        tmp_path,
        [
            {"name": "h", "path": str(tmp_path / "disk"), "format": "hf", "text_field": "text", "category": "document"},
            jsonl_source(jl, name="ok"),
        ],
    )
    assert run.quarantined() == [(str(tmp_path / "disk"), None, "unreadable_file")]
    assert run.kept() == [(str(jl), 1, DOCS[4])]


def test_on_bad_record_fail_names_the_unreadable_file(tmp_path: Path):
    (tmp_path / "t.parquet").write_bytes(b"PAR1 not really")
    src = {
        "name": "p",
        "path": str(tmp_path / "t.parquet"),
        "format": "parquet",
        "text_field": "text",
        "category": "document",
    }
    with pytest.raises(BadRecordError, match=r"'p' at .*t\.parquet: unreadable_file \(file could not be read"):
        nodes.build_ledger({"sources": [src], "progress": False, "on_bad_record": "fail"})


def test_quarantine_writer_round_trips_any_string(tmp_path: Path):
    rows = [{"raw": "lone \ud800 high, \udcff escaped byte, NUL \x00, BOM \ufeff, é", "k\udc80": None}]
    ds = JSONLinesDataset(str(tmp_path / "q.jsonl"))
    ds.save(rows)
    assert ds.load() == rows
    json.loads((tmp_path / "q.jsonl").read_bytes().decode("utf-8"))  # valid UTF-8 JSON on disk


def test_every_fault_in_one_run_through_tokenizer_and_packing(tmp_path: Path):
    """All nodes of data_processing on a corpus holding faults of each kind train the same
    tokenizer and pack the same sequences as the corpus without them; the metrics name each reason."""
    good = prose_docs(150, seed=9)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    jl = corpus / "mixed.jsonl"
    good_lines = b"".join(line({"text": t}) for t in good[:100])
    bad_lines = (
        b"[" * 50_000
        + b"\n"
        + b'{"text": "\xff"}\n'
        + b'{"text": 1, "s": "\\ud800"}\n'
        + b"[]\n"
        + b'{"text": "'
        + b"y" * 70_000
        + b'"}\n'
    )
    jl.write_bytes(b"\xef\xbb\xbf" + good_lines + bad_lines)
    parquet_docs(corpus / "p.parquet", 30, 10)
    (corpus / "q.parquet").write_bytes(b"garbage")
    for i, t in enumerate(good[100:]):
        (corpus / f"t{i:03d}.txt").write_text(t)
    sources = [
        jsonl_source(corpus / "*.jsonl", name="jl"),
        {
            "name": "pq",
            "path": str(corpus / "*.parquet"),
            "format": "parquet",
            "text_field": "text",
            "category": "code",
        },
        {"name": "tx", "path": str(corpus / "*.txt"), "format": "text", "text_field": "text", "category": "document"},
    ]
    cleaning = {"max_record_bytes": 60_000}
    params = {
        "sources": sources,
        "progress": False,
        "dedup": NO_DEDUP,
        "cleaning": cleaning,
        "packing": {"max_seq_len": 64, "preprocess_validation_fraction": 0.2},
    }

    def all_nodes():
        ledger = nodes.build_ledger(params)
        tokenizer, _ = nodes.train_tokenizer(ledger, params)
        train, val, _, manifest, _ = nodes.pack(ledger, tokenizer, params)
        return tokenizer.get_vocab(), train.read().to_pydict(), val.read().to_pydict(), manifest["splits"]

    run = run_nodes(tmp_path, sources, cleaning=cleaning)
    reasons = ("malformed_json", "invalid_utf8", "non_string_text", "not_an_object", "oversized", "unreadable_file")
    assert {r: run.metrics[f"quarantined.{r}"] for r in reasons} == dict.fromkeys(reasons, 1)
    assert run.metrics["records.kept"] == 150 + 30 and run.kept()[0] == (str(jl), 1, good[0])
    dirty = all_nodes()
    jl.write_bytes(good_lines)  # the same corpus without its faults (same files and rows)
    (corpus / "q.parquet").unlink()
    clean = all_nodes()
    assert dirty[3]["train"]["documents"] > 0 and dirty[3]["val"]["documents"] > 0
    assert dirty == clean


def test_stdlib_files_are_read_in_their_declared_encoding_and_bad_ones_quarantined(tmp_path: Path, monkeypatch):
    """The stdlib corpus reads a file by its coding cookie (a Latin-1 module is good input); a
    file that still does not decode is quarantined by name instead of skipped."""
    from xoron_pipelines.data import stdlib_corpus

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a_latin.py").write_bytes(
        b"# -*- coding: iso-8859-1 -*-\nname = 'caf\xe9 au lait, long enough'\n"
    )
    (tmp_path / "lib" / "b_bad.py").write_bytes(b"name = 'caf\xe9'\n")  # no cookie: must be UTF-8
    (tmp_path / "lib" / "c_ok.py").write_text("value = 'plain utf-8 module text'\n")
    monkeypatch.setattr(stdlib_corpus, "stdlib_root", lambda: tmp_path / "lib")
    run = run_nodes(
        tmp_path,
        [{"name": "code", "path": "code", "format": "stdlib", "text_field": "text", "category": "code"}],
        cleaning={"min_chars": 0},
    )
    assert run.quarantined() == [("stdlib:b_bad.py", None, "unreadable_file")]
    assert run.detail(None).startswith("file could not be read: SyntaxError: invalid or missing encoding declaration")
    assert run.kept() == [
        ("stdlib:a_latin.py", 0, "# -*- coding: iso-8859-1 -*-\nname = 'café au lait, long enough'\n"),
        ("stdlib:c_ok.py", 0, "value = 'plain utf-8 module text'\n"),
    ]
