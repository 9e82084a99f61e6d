"""Ingest: every format, text extraction, quarantine accounting on a fuzzed corpus, limits,
source selection (mix / modality / category) and missing-path errors."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dp_helpers import jsonl_source, make_params, prose_docs, write_jsonl

from xoron_pipelines.data.ledger import BadRecordError, build_ledger
from xoron_pipelines.pipelines.data_processing.nodes import count_records, quarantine_rows
from xoron_pipelines.tokens import render_chat

NO_DEDUP = {"exact": False, "near_dup": False}


def ledger_rows(params):
    return build_ledger(params).read().to_pylist()


def kept_texts(params):
    return [r["text"] for r in ledger_rows(params) if r["status"] == "kept"]


def test_fuzzed_corpus_reconciles(tmp_path: Path):
    """Inject each kind of bad record at random lines; every line is accounted for once, with
    the injected reason and its line number."""
    rng = random.Random(7)
    good = prose_docs(300, seed=1)
    injected: dict[int, str] = {}
    lines: list[bytes] = []
    max_bytes = 4000
    kinds = {
        "malformed_json": lambda: b'{"text": "unterminated',
        "invalid_utf8": lambda: b'{"text": "bad \xff\xfe bytes"}',
        "missing_field": lambda: json.dumps({"body": "no text field here at all"}).encode(),
        "non_string_text": lambda: json.dumps({"text": rng.choice([12, 3.5, ["a"], {"x": 1}, True])}).encode(),
        "empty": lambda: json.dumps({"text": rng.choice(["", "   \n\t ", "\x00\x01\x02"])}).encode(),
        "oversized": lambda: json.dumps({"text": "x" * (max_bytes + 10)}).encode(),
        "bad_messages": lambda: json.dumps({"messages": [{"role": "user"}]}).encode(),
    }
    bad_plan = [k for k in kinds for _ in range(rng.randint(3, 9))]
    rng.shuffle(bad_plan)
    stream = [("good", g) for g in good] + [("bad", k) for k in bad_plan]
    rng.shuffle(stream)
    too_short = 0
    for lineno, (kind, value) in enumerate(stream, start=1):
        if kind == "good":
            if rng.random() < 0.05:  # a few records the length filter removes (not quarantined)
                value, too_short = "short", too_short + 1
            lines.append(json.dumps({"text": value}).encode())
        else:
            injected[lineno] = value
            lines.append(kinds[value]())
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    params = make_params(
        [jsonl_source(path, messages_field="messages")],
        cleaning={"min_chars": 10, "max_record_bytes": max_bytes},
        dedup=NO_DEDUP,
    )
    ledger = build_ledger(params)
    rows = ledger.read().to_pylist()
    table = count_records(ledger)
    by_status = table.groupby("status")["count"].sum().to_dict()

    assert len(rows) == len(stream)  # records in
    assert sum(by_status.values()) == len(stream)
    assert by_status["quarantined"] == len(injected)
    assert by_status["filtered"] == too_short
    assert by_status["kept"] == len(good) - too_short
    q = list(quarantine_rows(ledger))
    assert {r["row"]: r["reason"] for r in q} == injected
    assert Counter(r["reason"] for r in q) == Counter(injected.values())
    assert all(r["source"] == "src" and r["file"] == str(path) and r["raw"] is not None for r in q)
    reasons = dict(
        zip(table.loc[table.status == "quarantined", "reason"], table.loc[table.status == "quarantined", "count"])
    )
    assert reasons == dict(Counter(injected.values()))


def test_on_bad_record_fail_names_source_and_line(tmp_path: Path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "a fine first record"}\n{broken\n')
    params = make_params([jsonl_source(path, name="mine")], on_bad_record="fail")
    with pytest.raises(BadRecordError, match=r"'mine'.*a\.jsonl:2: malformed_json"):
        build_ledger(params)
    quarantine = make_params([jsonl_source(path, name="mine")], on_bad_record="quarantine")
    assert [r["status"] for r in ledger_rows(quarantine)] == ["kept", "quarantined"]


def test_missing_path_fails_before_work(tmp_path: Path):
    good = write_jsonl(tmp_path / "ok.jsonl", [{"text": "present and fine"}])
    params = make_params([jsonl_source(good, name="ok"), jsonl_source(tmp_path / "nope" / "*.jsonl", name="ghost")])
    with pytest.raises(FileNotFoundError, match=r"'ghost'.*nope/\*\.jsonl"):
        build_ledger(params)


def test_formats_json_parquet_text_dir_and_glob(tmp_path: Path):
    docs = prose_docs(6, seed=3)
    (tmp_path / "j.json").write_text(json.dumps([{"text": d} for d in docs[:2]]))
    pq.write_table(pa.table({"body": docs[2:4]}), tmp_path / "p.parquet")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text(docs[4])
    (tmp_path / "txt" / "b.txt").write_text(docs[5])
    for i in range(3):
        write_jsonl(tmp_path / "glob" / f"part{i}.jsonl", [{"text": f"{docs[i]} glob {i}"}])
    params = make_params(
        [
            {
                "name": "j",
                "path": str(tmp_path / "j.json"),
                "format": "json",
                "text_field": "text",
                "category": "document",
            },
            {
                "name": "p",
                "path": str(tmp_path / "p.parquet"),
                "format": "parquet",
                "text_field": "body",
                "category": "code",
            },
            {
                "name": "t",
                "path": str(tmp_path / "txt"),
                "format": "text",
                "text_field": "text",
                "category": "document",
            },
            jsonl_source(tmp_path / "glob" / "*.jsonl", name="g"),
        ],
        dedup=NO_DEDUP,
    )
    rows = ledger_rows(params)
    assert [(r["source"], r["text"]) for r in rows] == [
        ("j", docs[0]),
        ("j", docs[1]),
        ("p", docs[2]),
        ("p", docs[3]),
        ("t", docs[4]),
        ("t", docs[5]),
        ("g", f"{docs[0]} glob 0"),
        ("g", f"{docs[1]} glob 1"),
        ("g", f"{docs[2]} glob 2"),
    ]
    assert [r["category"] for r in rows[:4]] == ["document", "document", "code", "code"]
    assert all(r["modality"] == "text" for r in rows)


def test_hf_format_offline(tmp_path: Path):
    """``hf`` sources: a save_to_disk directory, and load_dataset on a local parquet builder."""
    import datasets

    rows = [{"instruction": f"Say number {i}", "input": f"{i}", "output": f"The number is {i}."} for i in range(5)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "disk"))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "local.parquet"))
    template = "Instruction:\n{instruction}\n\nInput:\n{input}\n\nOutput:\n{output}"
    params = make_params(
        [
            {
                "name": "disk",
                "path": str(tmp_path / "disk"),
                "format": "hf",
                "text_template": template,
                "category": "conversation",
            },
        ],
        dedup=NO_DEDUP,
    )
    expected = [template.format(**r) for r in rows]
    assert kept_texts(params) == expected
    # load_dataset path (a local builder; streaming allowed)
    from xoron_pipelines.data import sources

    src = params.sources[0].model_copy(update={"path": "parquet", "streaming": True, "subset": "default"})
    got = []
    orig = datasets.load_dataset

    def local_parquet(path, name=None, split=None, streaming=False):
        assert (path, name, split, streaming) == ("parquet", "default", "train", True)
        return orig(path, data_files=str(tmp_path / "local.parquet"), split=split, streaming=streaming)

    datasets.load_dataset, saved = local_parquet, datasets.load_dataset
    try:
        got = [r.text for r in sources.iter_records(src, 10_000)]
    finally:
        datasets.load_dataset = saved
    assert got == expected


def test_text_template_and_messages(tmp_path: Path):
    msgs = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"messages": msgs},
            {"text": "a plain text row next to a chat row"},
            {"q": "only a question"},  # template field 'a' missing
        ],
    )
    chat = make_params([jsonl_source(path, messages_field="messages")], dedup=NO_DEDUP)
    rows = ledger_rows(chat)
    assert rows[0]["text"] == render_chat(msgs)
    assert rows[1]["text"] == "a plain text row next to a chat row"
    assert (rows[2]["status"], rows[2]["reason"]) == ("quarantined", "missing_field")
    tmpl = make_params(
        [
            {
                "name": "t",
                "path": str(path),
                "format": "jsonl",
                "text_template": "Q: {q}\nA: {a}",
                "category": "conversation",
            }
        ],
        dedup=NO_DEDUP,
    )
    assert [r["reason"] for r in ledger_rows(tmpl)] == ["missing_field"] * 3


def test_max_samples_caps_kept_records(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in prose_docs(20)])
    assert len(kept_texts(make_params([jsonl_source(path)], dedup=NO_DEDUP))) == 20
    capped = make_params([jsonl_source(path, max_samples=7)], dedup=NO_DEDUP)
    assert kept_texts(capped) == prose_docs(20)[:7]


def test_selection_by_mix_modality_category(tmp_path: Path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "alpha document text"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "beta document text"}])
    sources = [jsonl_source(a, name="a", category="code"), jsonl_source(b, name="b", category="conversation")]
    mix = {"only_b": {"name": "only_b", "datasets": [jsonl_source(b, name="b2", category="conversation")]}}

    def names(**kw):
        return sorted({r["source"] for r in ledger_rows(make_params(sources, data_mixes=mix, **kw))})

    assert names() == ["a", "b"]
    assert names(categories=["code"]) == ["a"]
    assert names(modalities=["text"]) == ["a", "b"]
    assert names(mix="only_b") == ["b2"]
    with pytest.raises(ValueError, match="no source left"):
        make_params(sources, modalities=["audio"])
    with pytest.raises(ValueError, match="not defined in data_mixes"):
        make_params(sources, mix="nope")


def test_stdlib_source_and_cap():
    params = make_params(
        [
            {"name": "code", "path": "code", "format": "stdlib", "text_field": "text", "category": "code"},
            {"name": "prose", "path": "prose", "format": "stdlib", "text_field": "text", "category": "document"},
        ],
        stdlib_corpus={"max_bytes": 60_000, "min_prose_chars": 40},
        dedup=NO_DEDUP,
        cleaning={"min_chars": 0, "max_chars": 1_000_000},
    )
    rows = ledger_rows(params)
    code = [r["text"] for r in rows if r["source"] == "code" and r["status"] == "kept"]
    prose = [r["text"] for r in rows if r["source"] == "prose" and r["status"] == "kept"]
    assert code and prose
    assert sum(len(t.encode()) for t in code) <= 60_000
    assert sum(len(t.encode()) for t in prose) <= 60_000
    assert all(len(t) >= 40 for t in prose)
    assert any("def " in t for t in code)
    assert not any(t.lstrip().startswith(("def ", "import ")) for t in prose)


def test_stdlib_knobs_change_corpus():
    from xoron_pipelines.data import stdlib_corpus
    from xoron_pipelines.pipelines.data_processing.params import StdlibCorpus

    files = stdlib_corpus.stdlib_files(include_tests=False)
    with_tests = stdlib_corpus.stdlib_files(include_tests=True)
    assert len(with_tests) > len(files) and not any("/test/" in f.as_posix() for f in files)
    short = list(stdlib_corpus.iter_rows("prose", StdlibCorpus(max_bytes=30_000, min_prose_chars=10)))
    long = list(stdlib_corpus.iter_rows("prose", StdlibCorpus(max_bytes=30_000, min_prose_chars=200)))
    assert min(len(r["text"]) for r in short) < 200 <= min(len(r["text"]) for r in long)


def test_progress_bars_follow_the_knob(tmp_path: Path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in prose_docs(5)])
    build_ledger(make_params([jsonl_source(path, name="shown")], progress=True))
    assert "ingest shown" in capsys.readouterr().err
    build_ledger(make_params([jsonl_source(path, name="hidden")], progress=False))
    assert "ingest hidden" not in capsys.readouterr().err
