"""Seed 000: environment detection, per-environment paths, multi-GPU device map."""

from __future__ import annotations

import pytest

from xoron_pipelines.training import detect_environment, environment_paths, get_device_map

# seed 000's table (temp dir, output/checkpoint dir, final model); Lightning's "..." is the studio
SEED_TABLE = {
    "kaggle": ("/kaggle/tmp/xoron", "/kaggle/tmp/xoron/checkpoints", "/kaggle/working/xoron-final"),
    "colab": ("/content/tmp", "/content/xoron-checkpoints", "/content/xoron-final"),
    "lightning": (
        "/tmp/xoron",
        "/teamspace/studios/this_studio/xoron-checkpoints",
        "/teamspace/studios/this_studio/xoron-final",
    ),
    "local": ("./tmp", "./xoron-checkpoints", "./xoron-final"),
}


def _detect(env=(), paths=(), colab=False):
    return detect_environment(
        environ=dict.fromkeys(env, "1"), exists=lambda p: p in paths, colab_importable=lambda: colab
    )


@pytest.mark.parametrize(
    "probe,expected",
    [
        ({"paths": ["/kaggle"]}, "kaggle"),
        ({"env": ["KAGGLE_KERNEL_RUN_TYPE"]}, "kaggle"),
        ({"colab": True}, "colab"),
        ({"env": ["COLAB_RELEASE_TAG"]}, "colab"),
        ({"paths": ["/teamspace"]}, "lightning"),
        ({"env": ["LIGHTNING_CLOUDSPACE_HOST"]}, "lightning"),
        ({}, "local"),
        ({"paths": ["/kaggle", "/teamspace"]}, "kaggle"),  # first match wins
    ],
)
def test_detect_environment(probe, expected):
    assert _detect(**probe) == expected


def test_detect_reads_real_environment(monkeypatch):
    monkeypatch.setenv("LIGHTNING_CLOUDSPACE_HOST", "x")
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(var, raising=False)
    assert detect_environment(exists=lambda p: False, colab_importable=lambda: False) == "lightning"


@pytest.mark.parametrize("env", list(SEED_TABLE))
def test_paths_match_seed_table(env):
    paths = environment_paths(env)
    assert paths.environment == env
    assert (paths.temp_dir, paths.output_dir, paths.final_model_dir) == SEED_TABLE[env]
    assert paths.datasets_dir.startswith(paths.temp_dir)


def test_unknown_environment():
    with pytest.raises(ValueError, match="unknown environment"):
        environment_paths("aws")


def test_two_gpu_layout_is_seed_000():
    gpu0 = [
        "vision_encoder",
        "video_encoder",
        "audio_encoder",
        "audio_decoder",
        "waveform_decoder",
        "projector",
        "generator",
        "video_generator",
    ]
    gpu1 = ["llm", "cross_attention", "modality_markers"]
    assert get_device_map(2) == {**dict.fromkeys(gpu0, "cuda:0"), **dict.fromkeys(gpu1, "cuda:1")}


def test_one_zero_and_many_gpus():
    two = get_device_map(2)
    assert get_device_map(1) == dict.fromkeys(two, "cuda:0")
    assert get_device_map(0) == dict.fromkeys(two, "cpu")
    four = get_device_map(4)
    assert four.keys() == two.keys()
    assert {four[c] for c in ("llm", "cross_attention", "modality_markers")} == {"cuda:3"}
    others = [d for c, d in four.items() if c not in ("llm", "cross_attention", "modality_markers")]
    assert set(others) == {"cuda:0", "cuda:1", "cuda:2"}  # spread over the other three, LLM GPU kept free
    with pytest.raises(ValueError):
        get_device_map(-1)
