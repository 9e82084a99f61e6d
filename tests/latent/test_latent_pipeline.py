"""End to end: ``kedro run --pipeline latent`` on a project copy whose decoder (nano Xoron),
tokenizer, pairs, pretraining ledger and embedding caches are prepared by the test; all four
stages at a step or two, their nested MLflow runs, the outputs, stage skips and the CLI."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from latent_helpers import SUMMARIES, TEXTS, TINY, decoder_model, tokenizer

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
    pq.write_table(
        pa.table(
            {"text": texts + ["dropped"], "status": ["kept"] * 10 + ["filtered"], "source": sources + ["stdlib_prose"]}
        ),
        ledger / "part-00000.parquet",
    )
    ec = {
        "preprocess_cache_dir": str(data / "04_feature" / "embedding_cache"),
        "progress": False,
        "preprocess_validation_fraction": 0.25,
        "max_pretrain_samples": 10,
        "max_seq_len": TINY["max_seq_len"],
    }
    with contextlib.chdir(project):
        EmbeddingCacheDataset(str(data / "04_feature" / "embedding_cache" / "pairs")).save(
            cache_pairs({"dialogue_summary": pairs}, tokenizer(), ec, {})
        )
        EmbeddingCacheDataset(str(data / "04_feature" / "embedding_cache" / "pretrain")).save(
            cache_pretrain_text(pq.read_table(ledger).to_pylist(), tokenizer(), ec)
        )
    return {"embedding_cache": ec}


def test_kedro_run_latent(kedro_project: Path, capsys):
    import mlflow

    from tests.helpers import run_pipeline
    from xoron_pipelines.datasets.embedding_cache import EmbeddingCacheDataset
    from xoron_pipelines.latent import cli

    ec = prepare(kedro_project)
    params = {
        **ec,
        "latent": {
            **TINY,
            "pretrain_middle_batch_size": 4,
            "pretrain_adapter_batch_size": 2,
            "finetune_middle_max_samples": 2,
            "finetune_adapter_batch_size": 2,
            "pretrain_adapter_max_samples_arxiv": 0,
            "arxiv_dataset": "stdlib_code",
        },
    }
    run_pipeline(kedro_project, "latent", params)

    data = kedro_project / "data"
    summaries = {s: json.loads((data / "08_reporting" / "latent" / f"{s}.json").read_text()) for s in STAGES}
    rows = {s: summaries[s]["rows"] for s in STAGES}
    pretrain_train = len(EmbeddingCacheDataset(str(data / "04_feature" / "embedding_cache" / "pretrain")).load().train)
    pairs_train = len(EmbeddingCacheDataset(str(data / "04_feature" / "embedding_cache" / "pairs")).load().train)
    # per-stage caps: every pretrain row in stage 1, no arxiv (stdlib_code) rows in stage 2, 2 rows in stage 3
    assert rows["pretrain_middle"] == pretrain_train and rows["finetune_adapter"] == pairs_train > 2
    assert rows["finetune_middle"] == 2
    middle_sources, adapter_sources = (
        summaries["pretrain_middle"]["row_sources"],
        summaries["pretrain_adapter"]["row_sources"],
    )
    assert middle_sources["stdlib_code"] > 0 and "stdlib_code" not in adapter_sources
    assert rows["pretrain_adapter"] == middle_sources["stdlib_prose"] == adapter_sources["stdlib_prose"]
    assert {s: summaries[s]["batch_size"] for s in STAGES} == {
        "pretrain_middle": 4,
        "pretrain_adapter": 2,
        "finetune_middle": 2,
        "finetune_adapter": 2,
    }
    assert summaries["pretrain_middle"]["trained"] == ["compression", "middle"]
    assert all(summaries[s]["cached_embeddings"] for s in STAGES)  # the encoder stays frozen
    assert summaries["finetune_adapter"]["trained"] == ["adapter"]
    for s in STAGES:
        name = "best_model_pretrain.safetensors" if s.startswith("pretrain") else "best_model_finetune.safetensors"
        assert (data / "06_models" / "latent" / s / name).is_file()
    assert (data / "06_models" / "latent" / "final" / "best_model.safetensors").is_file()
    samples = [
        json.loads(line) for line in (data / "07_model_output" / "latent" / "samples.jsonl").read_text().splitlines()
    ]
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
        ablation = summaries[s]["prefix_ablation"]
        if s.endswith("adapter"):  # the decoder's held-out loss with its own / a shuffled / a zero-latent prefix
            assert ablation["prefix_loss"] == pytest.approx(summaries[s]["after"]["eval_loss"], rel=0.05)
            for key, value in ablation.items():
                assert m[f"ablation_{key}"] == pytest.approx(value)
        else:
            assert ablation is None and not any(k.startswith("ablation_") for k in m)
    assert runs["latent.pretrain_middle"].data.params["trains"] == "compression,middle"

    with contextlib.chdir(kedro_project):
        out = cli.main(["--greedy", "--max-generation-length", "3", TEXTS[0], TEXTS[1]])
    assert len(out) == 2 and capsys.readouterr().out.count("\n") >= 2


def test_stage_skips_need_no_data():
    """Stages left out by the switches (or with nothing to train) pass the model through
    without reading any data, and still write its weights."""
    from types import SimpleNamespace

    from xoron_pipelines.latent.model import LatentConfig
    from xoron_pipelines.pipelines.latent.nodes import train_latent_stage

    stub = SimpleNamespace(
        cfg=LatentConfig(encoder_model="x", encoder_hidden=4, decoder_hidden=4), decoder_bundle=None, latent_state=dict
    )
    for overrides, stage in (
        ({"run_pretraining": False}, "pretrain_middle"),
        ({"run_finetuning": False}, "finetune_adapter"),
        ({"pipeline_mode": "finetune_only"}, "pretrain_adapter"),
        ({"training_phase": "phase1"}, "finetune_middle"),
    ):
        model, art, summary = train_latent_stage(stub, None, None, {}, {**TINY, **overrides}, stage=stage)
        assert model is stub and "skipped" in summary and art.config["stage"] == stage


def test_cached_embeddings_used_only_when_valid():
    import copy
    from types import SimpleNamespace

    from latent_helpers import tiny_params

    from xoron_pipelines.latent.encoder import PACKAGED_ENCODER, resolve_encoder_dir
    from xoron_pipelines.pipelines.latent.nodes import cached_embeddings_usable as usable

    model = SimpleNamespace(
        cfg=SimpleNamespace(encoder_model=PACKAGED_ENCODER),
        encoder_trained=False,
        encoder=SimpleNamespace(normalize=True, max_len=32),
    )
    manifest = {
        "encoder": {"path": str(resolve_encoder_dir(PACKAGED_ENCODER)), "max_length": 32},
        "embedding": {"pooling": "mean", "normalize": True},
        "cache_use_embeddings_for_training": True,
    }
    cache = lambda **kw: SimpleNamespace(manifest={**copy.deepcopy(manifest), **kw})  # noqa: E731
    p = tiny_params()
    assert usable(cache(), model, p, False)
    assert not usable(cache(), model, tiny_params(run_preprocessing=False), False)
    assert not usable(cache(), model, p, True)
    assert not usable(cache(cache_use_embeddings_for_training=False), model, p, False)
    assert not usable(cache(embedding={"pooling": "tokens", "normalize": True}), model, p, False)
    assert not usable(cache(embedding={"pooling": "mean", "normalize": False}), model, p, False)
    assert not usable(cache(encoder={**manifest["encoder"], "max_length": 64}), model, p, False)
    model.encoder_trained = True
    assert not usable(cache(), model, p, False)
