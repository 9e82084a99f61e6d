"""End to end: ``synth`` then ``data_processing`` through a real KedroSession on a project copy;
catalog outputs, AutoTokenizer, quarantine, report table and MLflow tracking."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from xoron_pipelines.validation import ParameterError, validate_group

pytestmark = pytest.mark.slow


def default_params(project_root: Path) -> dict:
    conf = project_root / "conf" / "base" / "parameters_data_processing.yml"
    return yaml.safe_load(conf.read_text())["data_processing"]


def test_kedro_run_data_processing(kedro_project: Path, project_root: Path):
    from tests.helpers import run_pipeline
    from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES

    run_pipeline(kedro_project, "synth", {"synth.counts": {k: 15 for k in SYNTH_TYPES}})
    import mlflow

    mlflow.end_run()  # the synth session leaves its run active in this process; start afresh
    bad = kedro_project / "data" / "01_raw" / "extra.jsonl"
    # a byte order mark before the good first record; then malformed JSON, a wrong type, nesting
    # past the parser's limit and a lone surrogate: each quarantined, the run goes on
    bad.write_bytes(
        b'\xef\xbb\xbf{"text": "a good extra record, long enough"}\n{not json\n{"text": 5}\n'
        + b"[" * 100_000
        + b'\n{"text": 6, "s": "\\ud800"}\n'
    )
    sources = default_params(project_root)["sources"] + [
        {
            "name": "extra",
            "path": "data/01_raw/extra.jsonl",
            "format": "jsonl",
            "text_field": "text",
            "category": "document",
            "weight": 0.01,
        }
    ]
    run_pipeline(
        kedro_project,
        "data_processing",
        {
            "data_processing": {
                "sources": sources,
                "stdlib_corpus": {"max_bytes": 150_000},
                "progress": False,
            }
        },
    )
    data = kedro_project / "data"
    # tokenizer: loads offline with AutoTokenizer, chat template attached
    from transformers import AutoTokenizer

    from xoron_pipelines.tokens import render_chat

    tok = AutoTokenizer.from_pretrained(str(data / "05_model_input" / "tokenizer"), local_files_only=True)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == render_chat(msgs, True)
    # packed shards + manifest
    import pyarrow as pa
    import pyarrow.dataset as pads

    manifest = json.loads((data / "05_model_input" / "packing_manifest.json").read_text())
    for split in ("train", "val"):
        t = pads.dataset(str(data / "05_model_input" / "packed" / split), format="parquet").to_table()
        assert t.schema.field("input_ids").type.value_type == pa.int32()
        assert t.num_rows == manifest["splits"][split]["sequences"] > 0
        assert sum(t.column("length").to_pylist()) == manifest["splits"][split]["tokens"]
    assert set(manifest["sources"]) == {s["name"] for s in sources}
    # one data generation in every published output; no staging left in data/
    from xoron_pipelines.datasets.generation import read_marker

    published = ["tokenizer", "packed/train", "packed/val", "packed_mixes", "packed_mixes/code/train"]
    assert {read_marker(data / "05_model_input" / name) for name in published} == {manifest["generation"]} != {None}
    assert not list(data.rglob(".*.stage-*")) and not any((data / ".staging").iterdir())
    # one packing per stage mix, with the mix's sources only
    stage_mixes = default_params(project_root)["stage_mixes"]
    assert set(manifest["stage_mixes"]) == set(stage_mixes) == {"language", "code"}
    for name, weights in stage_mixes.items():
        assert set(manifest["stage_mixes"][name]["sources"]) == set(weights)
        for split in ("train", "val"):
            t = pads.dataset(str(data / "05_model_input" / "packed_mixes" / name / split), format="parquet").to_table()
            assert t.num_rows == manifest["stage_mixes"][name]["splits"][split]["sequences"] > 0
    # quarantine + per-reason table
    q = [json.loads(line) for line in (data / "03_primary" / "quarantine.jsonl").read_text().splitlines()]
    extra_q = sorted((r["row"], r["reason"]) for r in q if r["source"] == "extra")
    assert extra_q == [(2, "malformed_json"), (3, "non_string_text"), (4, "malformed_json"), (5, "non_string_text")]
    table = pd.read_csv(data / "08_reporting" / "data_processing_record_counts.csv", keep_default_na=False)
    assert set(table.columns) == {"source", "status", "reason", "count"}
    assert table.loc[table.status == "quarantined", "count"].sum() == len(q)
    # MLflow: metrics and the report artifact of the run
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xoron_pipelines")
    runs = client.search_runs([exp.experiment_id], filter_string="metrics.`data_processing.records.in` > 0")
    assert [r.info.run_name for r in runs] == ["data_processing"]
    m = runs[0].data.metrics
    assert m["data_processing.records.in"] == table["count"].sum()
    assert m["data_processing.records.in"] == (
        m["data_processing.records.kept"]
        + m["data_processing.records.quarantined"]
        + m["data_processing.records.filtered"]
    )
    assert m["data_processing.quarantined.malformed_json"] >= 1
    assert m["data_processing.tokenizer.vocab_size"] == len(tok)
    assert m["data_processing.mix.extra.target_share"] == pytest.approx(manifest["sources"]["extra"]["target_share"])
    assert m["data_processing.pack.train.tokens"] == manifest["splits"]["train"]["tokens"]
    code = manifest["stage_mixes"]["code"]
    assert m["data_processing.stage_mix.code.pack.train.tokens"] == code["splits"]["train"]["tokens"]
    assert m["data_processing.stage_mix.code.mix.stdlib_code.achieved_share"] == pytest.approx(
        code["sources"]["stdlib_code"]["achieved_share"]
    )
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id)]
    assert "data_processing_record_counts.csv" in artifacts


def test_parameter_validation(project_root: Path):
    base = default_params(project_root)
    validate_group("data_processing", base)
    for key, value, msg in (
        ("tokenizer", {"vocab_size": 5000}, "vocab_size"),
        ("packing", {"preprocess_validation_fraction": 1.5}, "preprocess_validation_fraction"),
        ("mix", "unknown_mix", "not defined in data_mixes"),
        ("on_bad_record", "skip", "on_bad_record"),
        ("cleaning", {"min_chars": 10, "max_chars": 5}, "min_chars"),
    ):
        with pytest.raises(ParameterError, match=msg):
            validate_group("data_processing", {**base, key: value})
    bad_sources = [
        ({"text_field": "text", "text_template": "{a}"}, "not both"),
        ({"category": "cooking"}, "unknown category"),
        ({"category": "vision", "modality": "text"}, "belongs to modality"),
        ({"weight": 0}, "weight"),
        ({"sample_repeat": 0}, "sample_repeat"),
    ]
    for change, msg in bad_sources:
        src = {"name": "s", "path": "x.jsonl", "text_field": "text", "category": "document"} | change
        with pytest.raises(ParameterError, match=msg):
            validate_group("data_processing", {**base, "sources": [src]})
