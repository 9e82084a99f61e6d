"""`kedro run --pipeline ablation` on tiny packed data: two variants (our model and the GPT-2
baseline) trained on the same tokens, one nested MLflow run each under the kedro run's run, and
the comparison table (one row per variant, finite losses) and loss-curve chart written and logged."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import copy_project, run_pipeline
from tests.training.finetune_helpers import CORPUS, chat_tokenizer
from xoron_pipelines.datasets.generation import generation_of, write_marker
from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset

SEQ = 32
VARIANTS = [{"name": "ours"}, {"name": "gpt2", "baseline": "gpt2"}]
PARAMS = {
    "model": {"preset": "nano", "overrides": {"num_layers": 2, "vocab_size": 512, "max_position_embeddings": 64}},
    "pretrain.stages.language.data_mix": None,  # the main packing (the test packs no mixes)
    "pretrain.stages.language.eval.max_batches": 1,
    "pretrain.stages.language.train.batch_size": 4,
    "data_processing.progress": False,
}


def _pack(path, ids: np.ndarray, generation: str) -> None:
    rows = ids[: len(ids) // SEQ * SEQ].reshape(-1, SEQ).astype(np.int32)
    path.mkdir(parents=True)
    table = pa.table(
        {
            "input_ids": pa.array(rows.tolist(), pa.list_(pa.int32())),
            "length": pa.array(np.full(len(rows), SEQ, dtype=np.int32)),
        }
    )
    pq.write_table(table, path / "part-00000.parquet")
    write_marker(path, generation)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy with a tokenizer and packed train / val data of one generation, and the
    two variants in its conf (the variant names are read from conf when the pipeline is built)."""
    project = copy_project(tmp_path_factory.mktemp("ablation") / "project")
    data = project / "data/05_model_input"
    tokenizer = chat_tokenizer()
    HFTokenizerDataset(str(data / "tokenizer")).save(tokenizer)
    generation = generation_of(tokenizer)
    ids = np.array(tokenizer(" ".join(CORPUS * 4), add_special_tokens=False)["input_ids"])
    cut = len(ids) * 4 // 5
    _pack(data / "packed/train", ids[:cut], generation)
    _pack(data / "packed/val", ids[cut:], generation)
    (data / "packed_mixes").mkdir()
    write_marker(data / "packed_mixes", generation)
    ablation = yaml.safe_load((project / "conf/base/parameters_ablation.yml").read_text())
    ablation["ablation"].update(
        variants=VARIANTS,
        train={"max_steps": 4, "warmup_steps": 1, "eval_steps": 2, "logging_steps": 1, "save_steps": 4},
        eval_rows=8,
    )
    (project / "conf/base/parameters_ablation.yml").write_text(yaml.safe_dump(ablation))
    run_pipeline(project, "ablation", PARAMS)
    return project


def test_the_table_has_one_row_per_variant_with_finite_losses(project):
    report = project / "data/08_reporting/ablation"
    table = pd.read_csv(report / "comparison.csv")
    assert table["variant"].tolist() == ["ours", "gpt2"] and table["model"].tolist() == ["xoron", "gpt2"]
    assert table["tokens"].tolist() == [4 * 4 * SEQ] * 2  # the same tokens: 4 steps x 4 rows x 32
    for column in ("final_train_loss", "final_val_loss", "bits_per_byte", "tokens_per_byte"):
        assert all(math.isfinite(v) and v > 0 for v in table[column]), column
    # bits per byte = val loss / ln 2 x tokens per byte (the same val tokens for both)
    assert np.allclose(table["bits_per_byte"], table["final_val_loss"] / math.log(2) * table["tokens_per_byte"])
    assert table["tokens_per_byte"].nunique() == 1
    # parameters matched within 1 %
    assert abs(table["total_params"][1] - table["total_params"][0]) / table["total_params"][0] < 0.01
    markdown = (report / "comparison.md").read_text()
    assert markdown.startswith("| variant | model |") and markdown.count("\n") == 4  # header, rule, 2 rows
    results = json.loads((report / "comparison.json").read_text())
    for result in results:  # the loss curve of every logged step, and the validation points
        assert [p["step"] for p in result["curve"] if "loss" in p] == [1, 2, 3, 4]
        assert [p["step"] for p in result["curve"] if "eval_loss" in p] == [2, 4]
    png = (report / "loss_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_one_nested_mlflow_run_per_variant_and_the_comparison_on_the_parent(project):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"ours", "gpt2"}
    (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in children.values()}
    for run in children.values():
        assert run.data.metrics["loss"] > 0 and run.data.params["train.max_steps"] == "4"
    logged = {a.path for a in client.list_artifacts(parent_id)}
    assert {"loss_curves.png", "comparison.csv"} <= logged
    results = json.loads((project / "data/08_reporting/ablation/comparison.json").read_text())
    assert {r["variant"]: r["mlflow_run_id"] for r in results} == {n: r.info.run_id for n, r in children.items()}
