"""End to end: ``kedro run --pipeline latent`` on a project copy whose decoder (nano Xoron),
tokenizer, pairs, pretraining ledger and embedding caches are prepared by the test; all four
stages at a step or two, their nested MLflow runs, the outputs, stage skips and the CLI."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from latent_helpers import SUMMARIES, TEXTS, TINY, decoder_model, tokenizer  # noqa: E402

pytestmark = pytest.mark.slow

STAGES = ["pretrain_middle", "pretrain_adapter", "finetune_middle", "finetune_adapter"]


def prepare(project: Path) -> dict:
    """Decoder, tokenizer, pairs, ledger and both caches, as the earlier pipelines leave them."""
    from xoron_pipelines.datasets.embedding_cache import EmbeddingCacheDataset
    from xoron_pipelines.datasets.jsonl import JSONLinesDataset
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset
    from xoron_pipelines.pipelines.embedding_cache.nodes import cache_pairs, cache_pretrain_text

    data = project / "data"
    HFTokenizerDataset(str(data / "05_model_input" / "tokenizer")).save(tokenizer())
    decoder_model().save_pretrained(str(data / "06_models" / "code"))
    pairs = [{"source": s, "target": t} for s, t in zip(TEXTS, SUMMARIES)]
    JSONLinesDataset(str(data / "01_raw" / "synth" / "dialogue_summary.jsonl")).save(pairs)
    ledger = data / "02_intermediate" / "record_ledger"
    ledger.mkdir(parents=True)
    texts = TEXTS + [f"Document {i} is a short paragraph of general prose." for i in range(4)]
    sources = ["stdlib_prose"] * 6 + ["stdlib_code"] * 4
    pq.write_table(pa.table({"text": texts + ["dropped"], "status": ["kept"] * 10 + ["filtered"],
                             "source": sources + ["stdlib_prose"]}), ledger / "part-00000.parquet")
    ec = {"preprocess_cache_dir": str(data / "04_feature" / "embedding_cache"), "progress": False,
          "preprocess_validation_fraction": 0.25, "max_pretrain_samples": 10}
    with contextlib.chdir(project):
        pair_manifest, _ = cache_pairs(pairs, tokenizer(), None, ec)
        pre_manifest, _ = cache_pretrain_text(pq.read_table(ledger).to_pylist(), tokenizer(), ec)
    EmbeddingCacheDataset(str(data / "04_feature" / "latent_pair_cache.json")).save(pair_manifest)
    EmbeddingCacheDataset(str(data / "04_feature" / "latent_pretrain_cache.json")).save(pre_manifest)
    return {"embedding_cache": ec}


def test_kedro_run_latent(kedro_project: Path, capsys):
    import mlflow
    from tests.helpers import run_pipeline

    from xoron_pipelines.latent import cli

    ec = prepare(kedro_project)
    params = {**ec, "latent": {**TINY, "pretrain_middle_batch_size": 4, "pretrain_adapter_batch_size": 2,
                               "finetune_middle_max_samples": 3, "finetune_adapter_batch_size": 2,
                               "pretrain_adapter_max_samples_arxiv": 0, "arxiv_dataset": "stdlib_code"}}
    run_pipeline(kedro_project, "latent", params)

    data = kedro_project / "data"
    summaries = {s: json.loads((data / "08_reporting" / "latent" / f"{s}.json").read_text()) for s in STAGES}
    train_rows = {s: summaries[s]["rows"] for s in STAGES}
    pre_train = len(json.loads((data / "04_feature" / "latent_pretrain_cache.json").read_text())["splits"]) and \
        summaries["pretrain_middle"]["rows"]
    # per-stage caps: arxiv (stdlib_code) rows dropped in stage 2, 3 rows in stage 3
    assert train_rows["pretrain_adapter"] < pre_train and train_rows["finetune_middle"] == 3
    assert {s: summaries[s]["batch_size"] for s in STAGES} == {
        "pretrain_middle": 4, "pretrain_adapter": 2, "finetune_middle": 3, "finetune_adapter": 2}
    assert summaries["pretrain_middle"]["trained"] == ["compression", "encoder", "middle"]
    assert summaries["finetune_adapter"]["trained"] == ["adapter"]
    for s in STAGES:
        name = "best_model_pretrain.safetensors" if s.startswith("pretrain") else "best_model_finetune.safetensors"
        assert (data / "06_models" / "latent" / s / name).is_file()
    assert (data / "06_models" / "latent" / "final" / "best_model.safetensors").is_file()
    samples = [json.loads(line) for line in (data / "07_model_output" / "latent" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(set(r) == {"source", "target", "generated"} for r in samples)

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xoron_pipelines")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], "tags.`xoron.pipeline` = 'latent'")}
    assert sorted(runs) == sorted(f"latent.{s}" for s in STAGES)
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs.values()}
    assert len(parents) == 1 and None not in parents
    for s in STAGES:
        m = runs[f"latent.{s}"].data.metrics
        assert m["before_eval_loss"] == pytest.approx(summaries[s]["before"]["eval_loss"])
        assert m["after_eval_loss"] == pytest.approx(summaries[s]["after"]["eval_loss"])
        print(s, summaries[s]["steps"], round(m["before_eval_loss"], 4), "->", round(m["after_eval_loss"], 4))
    assert runs["latent.pretrain_middle"].data.params["trains"] == "compression,encoder,middle"

    with contextlib.chdir(kedro_project):
        out = cli.main(["--greedy", "--max-generation-length", "3", TEXTS[0], TEXTS[1]])
    assert len(out) == 2 and capsys.readouterr().out.count("\n") >= 2


def test_stage_skips_need_no_data():
    from latent_helpers import TINY as tiny

    from xoron_pipelines.pipelines.latent.nodes import train_latent_stage

    class Stub:
        decoder_bundle = None

        def latent_state(self):
            return {}

        cfg = None

    import dataclasses

    from xoron_pipelines.latent.model import LatentConfig

    stub = Stub()
    stub.cfg = LatentConfig(encoder_model="x", encoder_hidden=4, decoder_hidden=4)
    for overrides, stage in (({"run_pretraining": False}, "pretrain_middle"), ({"run_finetuning": False}, "finetune_adapter"),
                             ({"pipeline_mode": "finetune_only"}, "pretrain_adapter"),
                             ({"training_phase": "phase1"}, "finetune_middle")):
        model, art, summary = train_latent_stage(stub, None, None, {}, {**tiny, **overrides}, stage=stage)
        assert model is stub and "skipped" in summary and art.config["stage"] == stage
        assert dataclasses.asdict(stub.cfg).items() <= art.config.items()
