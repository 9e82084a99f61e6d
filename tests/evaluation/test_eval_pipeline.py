"""End to end: the evaluation pipeline through Kedro on tiny saved stage models."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow as pa
import pytest
import torch
from eval_helpers import make_model

from tests.helpers import run_pipeline
from xoron_pipelines.datasets.model import XoronModelDataset
from xoron_pipelines.datasets.parquet_shards import ParquetShardsDataset
from xoron_pipelines.pipelines.evaluation import nodes as eval_nodes
from xoron_pipelines.pipelines.evaluation.params import STAGES

pytestmark = pytest.mark.slow


def _prepare(root, tok):
    tok.save_pretrained(str(root / "data/05_model_input/tokenizer"))
    for i, stage in enumerate(STAGES):
        model = make_model(len(tok), seed=i, max_positions=512)
        XoronModelDataset(str(root / f"data/06_models/{stage}")).save(model)
    docs = ["def f(x):\n    return x + 1\n", "Question: what is 3 plus 3? Answer: 6."]
    rows, lengths = [], []
    for text in docs:
        ids = [tok.bos_token_id, *tok.encode(text, add_special_tokens=False), tok.eos_token_id]
        rows.append(ids + [tok.pad_token_id] * (48 - len(ids)))
        lengths.append(len(ids))
    synth = root / "data/01_raw/synth/preference.jsonl"  # the preference stage's pairs (20% held out: 2)
    synth.parent.mkdir(parents=True, exist_ok=True)
    pairs = [{"prompt": f"{i} plus 2?", "chosen": f"It is {i + 2}.", "rejected": f"Maybe {i + 5}."} for i in range(10)]
    synth.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    ParquetShardsDataset(str(root / "data/05_model_input/packed/val")).save(
        pa.table({"input_ids": pa.array(rows, pa.list_(pa.int32())), "length": pa.array(lengths, pa.int32())})
    )
    return rows, lengths


BOGUS_RUN_ID = "0123456789abcdef0123456789abcdef"


def _training_summaries(root) -> dict[str, str | None]:
    """``<stage>.train_summary`` JSONs as training writes them: the first stage's run id is a
    real nested run (child of a ``kedro run``-like parent) in the project's tracking DB, the
    second stage's id exists nowhere, the others have none. Returns stage -> run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    parent = client.create_run("0", run_name="training")
    child = client.create_run(
        "0", run_name=STAGES[0], tags={"mlflow.parentRunId": parent.info.run_id, "xoron.stage": STAGES[0]}
    )
    for run in (child, parent):
        client.set_terminated(run.info.run_id)
    ids = {stage: None for stage in STAGES}
    ids[STAGES[0]], ids[STAGES[1]] = child.info.run_id, BOGUS_RUN_ID
    for stage, run_id in ids.items():
        path = root / f"data/08_reporting/training/{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stage": stage, "steps": 1, "mlflow_run_id": run_id}))
    return ids


def _hand_perplexity(model, rows, lengths) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for row, n in zip(rows, lengths):
            logp = torch.log_softmax(model(torch.tensor([row[:n]])).logits[0].double(), -1)
            nll -= sum(float(logp[t - 1, row[t]]) for t in range(1, n))
            count += n - 1
    return math.exp(nll / count)


def test_evaluation_pipeline_end_to_end(kedro_project, tiny_tokenizer, monkeypatch):
    root = kedro_project
    rows, lengths = _prepare(root, tiny_tokenizer)
    docs = root / "data/01_raw/my_docs.jsonl"
    texts = ["def g(y):\n    return y * 2\n", "Answer: 6 é"]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    params = {
        "evaluation.max_samples": 3,
        "data_processing.stdlib_corpus.max_bytes": 100_000,  # fewer files to read (docstring_continuation)
        "evaluation.progress": False,
        "evaluation.compare_stages": ["language", "tools"],
        "evaluation.offline_tasks": {
            "docstring_continuation": 3,
            "program_output": 4,
            "unanswerable_refusal": 3,
            "arithmetic_word_problems": 3,
            "function_synthesis": 2,
            "heldout_text": 2,
        },
        "evaluation.gsm8k.max_new_tokens": 6,
        "evaluation.humaneval": {"n_samples": 2, "ks": [1, 2], "temperature": 0.8, "max_new_tokens": 6},
        "evaluation.perplexity.text_sources": [
            {"name": "my_docs", "path": str(docs), "format": "jsonl", "text_field": "text", "category": "document"}
        ],
    }
    run_ids = _training_summaries(root)
    # a spy on the nodes' logger (Kedro's logging config resets handlers of existing loggers)
    warned: list[str] = []
    monkeypatch.setattr(eval_nodes.log, "warning", lambda msg, *args: warned.append(msg % args))
    run_pipeline(root, "evaluation", params)

    for stage in ("untrained", *STAGES):  # the untrained starting model through the same nodes
        results = json.loads((root / f"data/08_reporting/evaluation/{stage}/results.json").read_text())
        assert results["stage"] == stage
        assert set(results["perplexity"]) == {"packed_val", "heldout_text", "my_docs"}
        assert results["perplexity"]["my_docs"]["bytes"] == sum(len(t.encode()) for t in texts)
        tasks = results["tasks"]
        assert set(tasks) == {
            "docstring_continuation",
            "program_output",
            "unanswerable_refusal_mc1",
            "unanswerable_refusal_mc2",
            "arithmetic_word_problems",
            "function_synthesis",
        }
        assert all(t["n"] == (2 if name == "function_synthesis" else 3) for name, t in tasks.items())
        assert set(tasks["function_synthesis"]) == {"pass_at_1", "pass_at_2", "n", "chance"}
        assert tasks["program_output"]["chance"] == 0.25 and tasks["arithmetic_word_problems"]["chance"] == 0
        figures = results["figures"]  # every figure with n, a 95% interval and chance
        assert set(figures) == set(eval_nodes.report.flatten(tasks)) | {
            f"ppl_{s}.{m}" for s in results["perplexity"] for m in ("perplexity", "bits_per_byte")
        }
        bad = {k: f for k, f in figures.items() if not f["lo"] - 1e-9 <= f["value"] <= f["hi"] + 1e-9}
        assert not bad and all(f["n"] == len(f["items"][0]) for f in figures.values()), bad
        samples = [
            json.loads(line)
            for line in (root / f"data/07_model_output/evaluation/{stage}/samples.jsonl").read_text().splitlines()
        ]
        assert sum(s["task"] == "function_synthesis" for s in samples) == 2
        assert all(len(s["completions"]) == 2 for s in samples if s["task"] == "function_synthesis")
    untrained = json.loads((root / "data/08_reporting/evaluation/untrained/results.json").read_text())
    assert untrained["perplexity"]["packed_val"]["perplexity"] > 0

    language = json.loads((root / "data/08_reporting/evaluation/language/results.json").read_text())
    packed = language["perplexity"]["packed_val"]
    model = XoronModelDataset(str(root / "data/06_models/language")).load()
    assert packed["tokens"] == sum(lengths) - len(lengths)
    assert math.isclose(packed["perplexity"], _hand_perplexity(model, rows, lengths), rel_tol=1e-4)

    table = pd.read_csv(root / "data/08_reporting/evaluation_comparison.csv")
    assert [c for c in table.columns if c in ("untrained", *STAGES)] == ["untrained", "language", "tools"]
    acc = table.set_index("metric").loc["program_output.acc"]
    assert math.isclose(acc["delta_tools"], acc["tools"] - acc["language"], abs_tol=1e-12)
    assert math.isclose(acc["delta_language"], acc["language"] - acc["untrained"], abs_tol=1e-12)
    assert acc["n"] == 3 and acc["chance"] == 0.25  # max_samples 3
    assert "| program_output.acc | 3 | 0.25 |" in (root / "data/08_reporting/evaluation_comparison.md").read_text()
    chart = json.loads((root / "data/08_reporting/evaluation_chart.json").read_text())
    assert {t["name"] for t in chart["data"]} == {"untrained", "language", "tools", "chance"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = {k: v for run in runs for k, v in run.data.metrics.items()}
    for stage in STAGES:
        key = f"evaluation.{stage}.program_output.acc"
        assert key in logged
        stage_results = json.loads((root / f"data/08_reporting/evaluation/{stage}/results.json").read_text())
        assert logged[key] == stage_results["tasks"]["program_output"]["acc"]
        assert logged[f"{key}_ci_lo"] == stage_results["figures"]["program_output.acc"]["lo"]
        # lm-evaluation-harness: offline, the standard tasks are skipped with reasons; the shipped text task runs
        harness_json = json.loads((root / f"data/08_reporting/evaluation/{stage}/harness.json").read_text())
        bpb = harness_json["tasks"]["xoron_heldout_text"]["bits_per_byte"]["value"]
        assert logged[f"evaluation.{stage}.harness/xoron_heldout_text/bits_per_byte"] == bpb
        assert (
            harness_json["skipped"]["hellaswag"].startswith("offline, no local copy")
            and "humaneval" in harness_json["skipped"]
        )

    # the stage's own training run got its evaluation too; the unknown / missing ids only warned
    real = client.get_run(run_ids[STAGES[0]]).data.metrics
    first = json.loads((root / f"data/08_reporting/evaluation/{STAGES[0]}/results.json").read_text())
    assert real["eval/ppl_packed_val.perplexity"] == first["perplexity"]["packed_val"]["perplexity"]
    assert real["eval/program_output.acc"] == first["tasks"]["program_output"]["acc"]
    assert all(key.startswith("eval/") for key in real)
    assert not any(
        key.startswith("eval/") for run in runs if run.info.run_id != run_ids[STAGES[0]] for key in run.data.metrics
    )
    assert sum(BOGUS_RUN_ID in m and STAGES[1] in m for m in warned) == 1, warned
    # collect of the last stages, and the preference_accuracy node (its summary has no run id)
    assert sum("no MLflow run id" in m for m in warned) == len(STAGES) - 1
    assert sum("no MLflow run id" in m and "preference" in m for m in warned) == 2

    pref = json.loads((root / "data/08_reporting/evaluation/preference_accuracy.json").read_text())
    assert pref["n"] == 2 and pref["reference"]["margin_accuracy"]["n"] == 2
    assert [r["metric"] for r in pref["rows"]] == [
        "preference_accuracy.implicit_reward_accuracy",
        "preference_accuracy.margin_accuracy",
    ]

    # the comparison chart is also a PNG artefact of the kedro run's run (named after the pipeline)
    png = root / "data/08_reporting/evaluation_chart.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (parent,) = [run for run in runs if run.info.run_name == "evaluation"]
    assert "evaluation_chart.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
