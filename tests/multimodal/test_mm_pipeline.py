"""`kedro run --pipeline multimodal` end to end in a temp project (mode image, a tiny LLM): the
image stage learns to look (held-out colour VQA well above the blind baseline), logs a nested MLflow
run with its evaluation and sample grid, the other stages pass the model through, and a re-run
resumes from the finished checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mm_tables import audio_table, image_table, video_table

from tests.helpers import copy_project, run_pipeline

PARAMS = {
    "multimodal.mode": "image",
    "multimodal.model.vision": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 1},
    "multimodal.model.projector_type": "mlp",
    "multimodal.model.num_vision_tokens": 4,
    "multimodal.stages.image.tasks": ["vqa"],
    "multimodal.stages.image.train": {"max_steps": 120, "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 5},
    "multimodal.stages.image.tracking": {"system_metrics": False},
    "multimodal.evaluation": {"batch_size": 16, "grid_items": 8},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from xoron_pipelines.data import tokenizer_training as tt
    from xoron_pipelines.datasets.media_table import MediaTableDataset
    from xoron_pipelines.datasets.model import XoronModelDataset
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset
    from xoron_pipelines.model import XoronForCausalLM, get_config

    project = copy_project(tmp_path_factory.mktemp("multimodal") / "project")
    images = image_table(320, 64, seed=3, kinds=(0,))  # colour questions: learnt in 120 steps
    tables = {"image": images, "video": video_table(2, 1), "audio": audio_table(2, 1)}
    for modality, table in tables.items():
        MediaTableDataset(str(project / f"data/03_primary/media/{modality}.parquet")).save(table)
    texts = [*images.caption, *images.question, *images.answer] * 3
    tok_ds = HFTokenizerDataset(str(project / "data/05_model_input/tokenizer"))
    tok_ds.save(tt.wrap(tt.train_bpe(texts, vocab_size=400, min_frequency=1), model_max_length=128))
    tokenizer = tok_ds.load()
    torch.manual_seed(0)
    config = get_config(
        "nano", vocab_size=len(tokenizer), num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128,
        max_position_embeddings=128,
    )  # fmt: skip
    XoronModelDataset(str(project / "data/06_models/tools")).save(XoronForCausalLM(config))
    run_pipeline(project, "multimodal", PARAMS)
    return project


def _json(project: Path, rel: str) -> dict:
    return json.loads((project / rel).read_text())


def test_image_stage_beats_the_blind_baseline(project):
    ev = _json(project, "data/08_reporting/multimodal/image_evaluation.json")
    vqa = ev["vqa"]
    assert vqa["with_media"]["n"] == vqa["blind"]["n"] == 64
    seeing, blind = vqa["with_media"]["accuracy"], vqa["blind"]["accuracy"]
    assert seeing >= blind + 0.3, (seeing, blind)
    assert vqa["with_media"]["ci95"][0] > vqa["chance"]
    summary = _json(project, "data/08_reporting/training/image.json")
    assert summary["steps"] == 120 and summary["kind"] == "multimodal"


def test_other_stages_pass_the_model_through(project):
    from xoron_pipelines.datasets.multimodal_model import MultimodalModelDataset

    tok = str(project / "data/05_model_input/tokenizer")
    image = MultimodalModelDataset(str(project / "data/06_models/multimodal/image"), tok).load()
    audio = MultimodalModelDataset(str(project / "data/06_models/multimodal/audio"), tok).load()
    assert image.config.modalities == ["image"]
    a, b = image.state_dict(), audio.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for stage in ("video", "audio"):
        assert _json(project, f"data/08_reporting/multimodal/{stage}_evaluation.json") == {
            "stage": stage,
            "enabled": False,
        }


def test_the_stage_is_a_nested_mlflow_run_with_its_evaluation(project):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    run_id = _json(project, "data/08_reporting/training/image.json")["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.data.tags.get("mlflow.parentRunId")
    assert "eval/vqa/with_media/accuracy" in run.data.metrics and "loss" in run.data.metrics
    artefacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/sample_grid.png", "evaluation/metrics.json"} <= artefacts
    assert any(a.path == "plots/loss_curve.png" for a in client.list_artifacts(run_id, "plots"))


def test_a_rerun_resumes_from_the_finished_checkpoint(project):
    run_pipeline(project, "multimodal", {**PARAMS, "multimodal.evaluation.enabled": False})
    summary = _json(project, "data/08_reporting/training/image.json")
    assert summary["resumed_from"] and summary["resumed_from"].endswith("checkpoint-120")
