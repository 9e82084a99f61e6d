"""End to end: ``synth`` then ``embedding_cache`` through a real KedroSession on a project copy
(decoder tokenizer and pretraining ledger prepared by the test instead of data_processing);
catalog outputs, MLflow metrics, and reuse on a second run."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def test_kedro_run_embedding_cache(kedro_project: Path, decoder_tokenizer):
    import mlflow

    from tests.helpers import run_pipeline
    from xoron_pipelines.datasets.embedding_cache import EmbeddingCacheDataset
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset
    from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES

    run_pipeline(
        kedro_project, "synth", {"synth.counts": {k: 6 if k == "dialogue_summary" else 0 for k in SYNTH_TYPES}}
    )
    data = kedro_project / "data"
    HFTokenizerDataset(str(data / "05_model_input" / "tokenizer")).save(decoder_tokenizer)
    ledger = data / "02_intermediate" / "record_ledger"
    ledger.mkdir(parents=True)
    texts = [f"Document {i}: a short paragraph of general text number {i}." for i in range(8)]
    pq.write_table(
        pa.table({"text": texts + ["filtered one"], "status": ["kept"] * 8 + ["filtered"]}),
        ledger / "part-00000.parquet",
    )

    params = {"embedding_cache": {"max_pretrain_samples": 5, "progress": False, "preprocess_validation_fraction": 0.2}}
    run_pipeline(kedro_project, "embedding_cache", params)
    pairs = EmbeddingCacheDataset(str(data / "04_feature" / "embedding_cache" / "pairs")).load()
    pretrain = EmbeddingCacheDataset(str(data / "04_feature" / "embedding_cache" / "pretrain")).load()
    assert pairs.path.resolve() == (data / "04_feature" / "embedding_cache" / "pairs").resolve()
    assert len(pairs.train) + len(pairs.val) == 6 and len(pretrain.train) + len(pretrain.val) == 5
    row = pairs.train[0]
    assert row["embedding"].shape == (384,) and row["embedding_int8"].dtype == "int8"
    assert set(pairs.train.meta["columns"]) == {
        "index",
        "num_tokens",
        "truncated",
        "target_ids",
        "target_attention_mask",
        "embedding",
        "embedding_scale",
    }

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xoron_pipelines")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="metrics.`embedding_cache.pairs.rows_in` > 0",
        order_by=["attributes.start_time ASC"],
    )
    assert len(runs) == 1
    m = runs[0].data.metrics
    assert m["embedding_cache.pairs.texts_encoded"] == 6 and m["embedding_cache.pairs.cache_miss"] == 1
    assert m["embedding_cache.pretrain.texts_encoded"] == 5
    assert m["embedding_cache.pairs.fidelity_cos_min"] >= 0.99
    assert m["embedding_cache.pairs.embedding_bytes_fp32"] / m["embedding_cache.pairs.embedding_bytes_int8"] > 3.9

    run_pipeline(kedro_project, "embedding_cache", params)  # nothing changed: both caches reused
    runs = client.search_runs([exp.experiment_id], filter_string="metrics.`embedding_cache.pairs.cache_hit` > 0")
    assert len(runs) == 1 and runs[0].data.metrics["embedding_cache.pretrain.cache_hit"] == 1
