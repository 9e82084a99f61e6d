"""data_processing on Ray Data (``engine: {kind: ray}``) against the local path, on a local
cluster of 2 workers shared by the module: same ledger (kept / quarantined / deduplicated records,
reasons, order), same packed rows, and a worker killed mid-run retried without losing or
duplicating records."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dp_helpers import jsonl_source, make_params, prose_docs, write_jsonl

from xoron_pipelines.cluster import EngineSettings, ray_session
from xoron_pipelines.data import engine_ray
from xoron_pipelines.data.ledger import BadRecordError
from xoron_pipelines.data.ledger import build_ledger as build_local
from xoron_pipelines.pipelines.data_processing import nodes

RAY = {"kind": "ray", "num_cpus": 2, "max_retries": 2}


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs) for the whole module (startup is slow)."""
    pytest.importorskip("ray")
    with ray_session(EngineSettings(**RAY)):
        yield


def _near(text: str) -> str:
    """A near-duplicate: the last word of a long document changed."""
    words = text.split()
    words[-1] = "changed."
    return " ".join(words)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Three JSONL shards (a directory source) with planted exact duplicates (within and across
    shards), near-duplicates, and bad records of several kinds; plus a second source that repeats
    documents of the first (cross-source duplicates)."""
    docs = [d + " " + d for d in prose_docs(60, seed=3)]  # long enough for 5-gram MinHash
    shard_a = [{"text": t} for t in docs[:20]] + [{"text": docs[0]}, {"text": _near(docs[1])}]
    shard_b = [{"text": t} for t in docs[20:40]] + [{"text": docs[5]}, {"text": 7}, {"txt": "no field"}]
    shard_c = [{"text": t} for t in docs[40:]] + [{"text": _near(docs[25])}, {"text": "   "}, {"text": "short"}]
    root = tmp_path / "corpus"
    write_jsonl(root / "a.jsonl", shard_a)
    write_jsonl(root / "b.jsonl", shard_b)
    path = write_jsonl(root / "c.jsonl", shard_c)
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"text": "broken\n')  # malformed JSON
    with (root / "b.jsonl").open("ab") as fh:
        fh.write(b'{"text": "bad \xff byte"}\n')  # invalid UTF-8
    write_jsonl(tmp_path / "other.jsonl", [{"text": docs[2]}, {"text": _near(docs[45])}, {"text": json.dumps(docs)}])
    return tmp_path


def _params(corpus: Path, engine: dict | None = None, **overrides):
    sources = [jsonl_source(corpus / "corpus", "main"), jsonl_source(corpus / "other.jsonl", "other")]
    values = {"cleaning": {"min_chars": 10}, "packing": {"max_seq_len": 64, "rows_per_shard": 7}, **overrides}
    if engine is not None:
        values["engine"] = engine
    return make_params(sources, **values)


def test_ray_ledger_equals_local(ray_cluster, corpus: Path):
    local_ledger = build_local(_params(corpus))
    ray_ledger = nodes.build_ledger(_params(corpus, RAY).model_dump())
    local, ray_rows = local_ledger.read().to_pylist(), ray_ledger.read().to_pylist()
    assert ray_rows == local  # same records, fates, reasons and order
    assert nodes.count_records(ray_ledger).equals(nodes.count_records(local_ledger))
    reasons = Counter((r["status"], r["reason"]) for r in local)
    # the planted cases are all there (the test is not vacuous)
    assert reasons[("filtered", "exact_duplicate")] == 3
    assert reasons[("filtered", "near_duplicate")] == 3
    for reason in ("malformed_json", "invalid_utf8", "non_string_text", "missing_field", "empty"):
        assert reasons[("quarantined", reason)] == 1
    assert reasons[("filtered", "too_short")] == 1


def test_ray_max_samples_and_fail_match_local(ray_cluster, corpus: Path):
    sources = [
        jsonl_source(corpus / "corpus", "main", max_samples=30),
        jsonl_source(corpus / "other.jsonl", "other"),
    ]
    local = build_local(make_params(sources)).read().to_pylist()
    ray_rows = engine_ray.build_ledger(make_params(sources), EngineSettings(**RAY)).read().to_pylist()
    assert ray_rows == local
    assert sum(r["status"] == "kept" and r["source"] == "main" for r in local) == 30
    fail = _params(corpus, on_bad_record="fail", dedup={"exact": False, "near_dup": False})
    with pytest.raises(BadRecordError) as local_err:
        build_local(fail)
    with pytest.raises(BadRecordError) as ray_err:
        engine_ray.build_ledger(fail, EngineSettings(**RAY))
    assert str(ray_err.value) == str(local_err.value)  # the same first bad record


def test_ray_chain_resolution_is_the_local_greedy_rule():
    """A~B, B~C, A!~C: B is dropped, C kept (B is not kept, so it blocks nothing)."""
    a, b, c = (0, 0, 0), (0, 0, 1), (0, 1, 0)
    fates, cutoff = engine_ray.resolve_duplicates({a: (1, {10}), b: (2, {10, 20}), c: (3, {20})}, {}, {})
    assert fates == {b: "near_duplicate"} and cutoff == {}
    fates, _ = engine_ray.resolve_duplicates({a: (1, {10}), b: (1, {10}), c: (1, {10})}, {}, {})
    assert fates == {b: "exact_duplicate", c: "exact_duplicate"}


def test_ray_pack_equals_local(ray_cluster, corpus: Path, trained_tokenizer):
    ledger = build_local(_params(corpus))
    out = {}
    for kind, engine in (("local", None), ("ray", RAY)):
        train, val, mixes, manifest, _ = nodes.pack(ledger, trained_tokenizer, _params(corpus, engine).model_dump())
        out[kind] = (train.read().to_pylist(), val.read().to_pylist(), manifest["splits"])
    assert out["ray"] == out["local"]
    train_rows, val_rows, splits = out["ray"]
    assert splits["train"]["documents"] > 0 and splits["val"]["documents"] > 0
    multiset = Counter(np.concatenate([r["input_ids"][: r["length"]] for r in train_rows + val_rows]).tolist())
    assert sum(multiset.values()) == splits["train"]["tokens"] + splits["val"]["tokens"]


def test_ray_worker_killed_mid_run_is_retried(ray_cluster, corpus: Path, tmp_path: Path):
    marker = tmp_path / "killed-once"

    def kill_once(rec, marker=str(marker)):
        import os

        if rec.file.endswith("b.jsonl") and rec.row == 10 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies mid-shard

    local = build_local(_params(corpus)).read().to_pylist()
    ray_rows = engine_ray.build_ledger(_params(corpus), EngineSettings(**RAY), hook=kill_once).read().to_pylist()
    assert marker.exists()  # the worker was killed
    assert ray_rows == local  # retried: nothing lost, nothing duplicated
    with pytest.raises(Exception):  # noqa: B017 -- with no retry the run fails (it does not go on short)
        marker.unlink()
        engine_ray.build_ledger(_params(corpus), EngineSettings(**{**RAY, "max_retries": 0}), hook=kill_once)


def test_ray_stdlib_and_synth_sources_match_local(ray_cluster):
    """The non-file sources: a stdlib source (read in one worker task) and a synth partition
    (rows handed over by the catalog, read on the driver)."""
    docs = prose_docs(12, seed=5)
    rows = [{"text": d} for d in docs] + [{"text": docs[0]}, {"messages": "not a chat"}, {"text": 3}]
    synth = {"chat": lambda: list(rows)}
    sources = [
        {"name": "prose", "path": "prose", "format": "stdlib", "text_field": "text", "category": "document"},
        {"name": "chat", "path": "chat", "format": "synth", "text_field": "text", "messages_field": "messages"},
    ]
    params = make_params(sources, stdlib_corpus={"max_bytes": 40_000})
    local = build_local(params, synth=synth).read().to_pylist()
    assert engine_ray.build_ledger(params, EngineSettings(**RAY), synth=synth).read().to_pylist() == local
    assert {r["source"] for r in local} == {"prose", "chat"}
    assert any(r["status"] == "quarantined" and r["source"] == "chat" for r in local)


def test_engine_knobs_reach_the_ray_tasks():
    """num_workers caps the tasks of every stage; max_retries is the tasks' retry count."""
    assert engine_ray._task_args(EngineSettings(kind="ray", num_workers=3, max_retries=1)) == {
        "max_retries": 1,
        "concurrency": 3,
    }
    assert engine_ray._task_args(EngineSettings(kind="ray")) == {"max_retries": 3}
