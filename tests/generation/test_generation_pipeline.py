"""End to end: `kedro run --pipeline generation` on tiny generators, then the exports load back
(safetensors + config through our classes, the image generator through diffusers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from gen_helpers import TINY_STAGE, llm, media_table, tokenizer

MEDIA_CATALOG = {
    "media_image": {"type": "pandas.ParquetDataset", "filepath": "data/03_primary/media/image.parquet"},
    "media_video": {"type": "pandas.ParquetDataset", "filepath": "data/03_primary/media/video.parquet"},
}


@pytest.fixture
def kedro_project(tmp_path: Path) -> Path:
    """A project copy with what finetune and data_processing leave: the tools model, the
    tokenizer and the media tables (catalog entries added here: the media data helper owns them)."""
    from tests.helpers import copy_project
    from xoron_pipelines.datasets.model import XoronModelDataset
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset

    project = copy_project(tmp_path / "project")
    catalog = project / "conf" / "base" / "catalog.yml"
    entries = yaml.safe_load(catalog.read_text())
    for name, entry in MEDIA_CATALOG.items():
        entries.setdefault(name, entry)
    catalog.write_text(yaml.safe_dump(entries, sort_keys=False))
    data = project / "data"
    XoronModelDataset(str(data / "06_models" / "tools")).save(llm())
    HFTokenizerDataset(str(data / "05_model_input" / "tokenizer")).save(tokenizer())
    (data / "03_primary" / "media").mkdir(parents=True)
    media_table("image", 24, 12, (16, 16)).to_parquet(data / "03_primary" / "media" / "image.parquet")
    media_table("video", 12, 12, (16, 16), frames=4).to_parquet(data / "03_primary" / "media" / "video.parquet")
    return project


def _run(project: Path, params: dict) -> None:
    """``kedro run --pipeline generation --tags image_gen,video_gen`` (speech has its own tests)."""
    import contextlib

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from tests.helpers import _end_mlflow_runs

    bootstrap_project(project)
    try:
        with contextlib.chdir(project), KedroSession.create(project_path=project, runtime_params=params) as session:
            session.run(pipeline_name="generation", tags=["image_gen", "video_gen"])
    finally:
        _end_mlflow_runs()


def test_kedro_run_generation(kedro_project: Path, monkeypatch):
    from tests.test_validation_once import _CountingValidator
    from xoron_pipelines.export.generation import XoronImagePipeline
    from xoron_pipelines.pipelines.generation.params import Params
    from xoron_pipelines.training.flow import Generator

    counter = _CountingValidator(Params.__pydantic_validator__, Params)
    monkeypatch.setattr(Params, "__pydantic_validator__", counter)
    params = {
        "generation": {
            "multi_scale": {
                "use_multi_scale": True,
                "image_scales": [[16, 16], [8, 8]],
                "image_scale_probs": [0.5, 0.5],
                "image_min_size": 8,
                "image_max_size": 16,
                "image_base_size": 16,
                "video_scales": [[16, 16]],
                "video_scale_probs": [1.0],
                "video_base_size": 16,
                "video_frame_scales": [2, 4],
                "video_frame_scale_probs": [0.5, 0.5],
                "video_min_frames": 2,
                "video_base_frames": 4,
            },
            "image_gen": {"sample_size": [16, 16], "generation_inference_steps": 2, "model": TINY_STAGE},
            "video_gen": {"generation_inference_steps": 2, "model": TINY_STAGE},
            "evaluation": {"num_prompts": 4, "fid_items": 4},
            "generate": {
                "image_prompts": ["two red circles on the left"],
                "video_prompts": ["a red circle moves right quickly"],
            },
        }
    }
    _run(kedro_project.resolve(), params)
    assert counter.raw == 1  # the hook validated the group once; the four nodes' model_validate passed it through
    data = kedro_project / "data"
    summary = json.loads((data / "08_reporting" / "generation" / "image_gen_summary.json").read_text())
    assert summary["steps"] == TINY_STAGE["steps"] and summary["scales"] == [[16, 16], [8, 8]]
    video_summary = json.loads((data / "08_reporting" / "generation" / "video_gen_summary.json").read_text())
    assert video_summary["frame_scales"] == [2, 4] and video_summary["scales"] == [[16, 16]]
    for stage in ("image_gen", "video_gen"):
        report = json.loads((data / "08_reporting" / "generation" / f"{stage}_evaluation.json").read_text())
        assert report["n_prompts"] == 4
        for key in ("adherence", "shuffled_prompt_baseline", "unconditional_baseline", "adherence_cfg_1"):
            assert report[key]["all"]["n"] == 4 and 0 <= report[key]["all"]["low"] <= report[key]["all"]["high"] <= 1
        assert report["frechet"]["real_vs_real"] >= 0
    from PIL import Image

    img = np.asarray(Image.open(data / "07_model_output" / "generation" / "image_000.png"))
    strip = np.asarray(Image.open(data / "07_model_output" / "generation" / "video_000.png"))
    assert img.shape == (16, 16, 3) and strip.shape == (16, 16 * 4, 3)

    # exports: the generator directories load through our classes, the image pipeline through diffusers
    out = data / "07_model_output" / "export" / "generation"
    assert json.loads((out / "manifest.json").read_text())["image_pipeline"]
    trained = Generator.load(data / "06_models" / "generation" / "image_gen")
    exported = Generator.load(out / "image_gen")
    from xoron_pipelines.training.flow import prompt_states

    ctx, mask = prompt_states(llm(), tokenizer(), ["one blue square at the top"])
    a = trained.generate(ctx, mask, seed=3, steps=2)
    assert np.array_equal(a, exported.generate(ctx, mask, seed=3, steps=2))
    pipe = XoronImagePipeline.from_pretrained(str(out / "image_pipeline"))
    import torch

    b = pipe("one blue square at the top", num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(a, b)
    video = Generator.load(out / "video_gen")
    assert video.kind == "video" and video.generate(ctx, mask, seed=0, steps=2).shape == (1, 4, 16, 16, 3)
