"""The one device resolver (``xoron_pipelines.device``): every value, with CUDA availability mocked
(nothing here pretends to run on a GPU), and the schemas that take a ``device`` knob."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from xoron_pipelines.device import resolve_device


@pytest.fixture()
def gpus(monkeypatch):
    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


def test_without_a_gpu(gpus):
    gpus(0)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=r"evaluation.device is cuda.* no CUDA device is available"):
            resolve_device(spec, "evaluation.device")


def test_with_two_gpus(gpus):
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"latent.device is cuda:2 but only 2 CUDA device"):
        resolve_device("cuda:2", "latent.device")
    with pytest.raises(ValueError, match="not a device this project uses"):
        resolve_device("meta")


@pytest.mark.parametrize("group", ["evaluation", "latent"])
def test_device_knobs_are_validated(group):
    from xoron_pipelines.schemas import SCHEMAS

    schema = SCHEMAS[group]
    for good in ("auto", "cpu", "cuda", "cuda:3"):
        assert schema.model_validate({"device": good}).device == good
    for bad in ("gpu", "cuda:", "cuda:x", "CUDA", 0):
        with pytest.raises(ValidationError, match="device"):
            schema.model_validate({"device": bad})
