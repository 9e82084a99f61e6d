"""parameters_multimodal.yml validates; wrong knobs are refused naming the key; the mode decides
which stages train (the others pass their model through)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from xoron_pipelines.pipelines.multimodal import nodes
from xoron_pipelines.pipelines.multimodal.params import Params
from xoron_pipelines.validation import ParameterError, validate_group

BASE = yaml.safe_load((Path(__file__).parents[2] / "conf/base/parameters_multimodal.yml").read_text())["multimodal"]


def _with(**changes):
    values = copy.deepcopy(BASE)
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        target = values
        for part in parents:
            target = target[part]
        target[leaf] = value
    return values


def test_defaults_validate_and_follow_the_mode():
    p = Params.model_validate(BASE)
    assert p.mode == "all" and p.modalities() == ["image", "video", "audio"]
    assert [p.trains(s) for s in ("image", "video", "audio")] == [True, True, True]
    one = Params.model_validate(_with(mode="video"))
    assert one.modalities() == ["video"] and one.multimodal_config().modalities == ["video"]
    assert [one.trains(s) for s in ("image", "video", "audio")] == [False, True, False]
    assert Params.model_validate(_with(mode="text")).modalities() == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "images"}, "mode"),
        ({"model__modalities": ["image"]}, "disagree with mode 'all'"),
        ({"stages__image__tasks": ["transcribe"]}, "do not apply to image"),
        ({"stages__audio__beta": 0.1}, "does not use beta"),
        ({"stages__video__distributed": {"nproc_per_node": 2}}, "trains in the node's process"),
        ({"multi_scale__image_base_size": 64}, "image_base_size"),
    ],
)
def test_bad_knobs_are_refused_naming_them(changes, message):
    with pytest.raises(ParameterError, match=message):
        validate_group("multimodal", _with(**changes), Params)


def test_stages_the_mode_skips_pass_their_model_through():
    sentinel = object()
    params = _with(mode="image")
    model, summary = nodes.train_modality(sentinel, None, None, params, stage="audio")
    assert model is sentinel and summary["enabled"] is False and summary["reason"] == "mode 'image'"
    assert nodes.evaluate_modality(sentinel, None, None, params, summary, stage="audio") == {
        "stage": "audio",
        "enabled": False,
    }
    disabled = _with(mode="all", stages__video__enabled=False)
    assert nodes.train_modality(sentinel, None, None, disabled, stage="video")[1]["reason"] == "disabled"
    llm = object()
    assert nodes.initialise_multimodal(llm, None, _with(mode="text")) is llm
