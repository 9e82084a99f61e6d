"""The one device resolver (``xoron_pipelines.device``) and what follows from the device
(precision, compile, kernels, peak FLOP/s, TF32), every value with CUDA availability mocked:
nothing here runs on a GPU, these test the resolution logic only."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from xoron_pipelines import device as dev
from xoron_pipelines.device import (
    CPU_PEAK_FLOPS,
    peak_flops,
    resolve_compile,
    resolve_device,
    resolve_kernels,
    resolve_precision,
    tf32_mode,
)
from xoron_pipelines.validation import ParameterError, validate_group

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture()
def gpus(monkeypatch):
    """gpus(n, name=..., bf16=...): pretend torch sees n CUDA devices of that name."""

    def set_gpus(n: int, name: str = "NVIDIA H100 80GB HBM3", bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: n > 0 and bf16)
        monkeypatch.setattr(dev, "_warned", set())

    return set_gpus


def test_without_a_gpu(gpus):
    gpus(0)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == CPU
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=r"evaluation.device is cuda.* no CUDA device is available"):
            resolve_device(spec, "evaluation.device")


def test_with_two_gpus(gpus):
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == CPU
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"latent.device is cuda:2 but only 2 CUDA device"):
        resolve_device("cuda:2", "latent.device")
    with pytest.raises(ValueError, match="not a device this project uses"):
        resolve_device("meta")


@pytest.mark.parametrize("group", ["evaluation", "latent", "export"])
def test_device_knobs_are_validated(group, gpus):
    from xoron_pipelines.schemas import SCHEMAS

    schema = SCHEMAS[group]
    gpus(4)
    for good in ("auto", "cpu", "cuda", "cuda:3"):
        assert schema.model_validate({"device": good}).device == good
    for bad in ("gpu", "cuda:", "cuda:x", "CUDA", 0, "cuda:4"):
        with pytest.raises(ValidationError, match="device"):
            schema.model_validate({"device": bad})
    gpus(0)
    assert schema.model_validate({"device": "auto"}).device == "auto"
    with pytest.raises(ValidationError, match="no CUDA device is available"):
        schema.model_validate({"device": "cuda"})


@pytest.mark.parametrize(
    ("group", "stage"),
    [("pretrain", "language"), ("pretrain", "code"), ("finetune", "tools"), ("finetune", "preference")],
)
def test_a_stage_device_without_its_gpu_stops_validation_naming_the_key(group, stage, gpus):
    values = yaml.safe_load((CONF / f"parameters_{group}.yml").read_text())[group]
    gpus(0)
    assert validate_group(group, values).stages[stage].device == "auto"  # the shipped default
    values["stages"][stage]["device"] = "cuda"
    with pytest.raises(ParameterError, match=rf"{group}\.stages\.{stage}\.device: cuda asks for a GPU but no CUDA"):
        validate_group(group, values)
    gpus(1)
    values["stages"][stage]["device"] = "cuda:1"
    with pytest.raises(ParameterError, match=rf"{group}\.stages\.{stage}\.device: .*only 1 CUDA device"):
        validate_group(group, values)
    values["stages"][stage]["device"] = "cuda:0"
    assert validate_group(group, values).stages[stage].device == "cuda:0"


def test_export_device_without_a_gpu_stops_validation(gpus):
    values = yaml.safe_load((CONF / "parameters_export.yml").read_text())["export"]
    values["output_dir"] = "out"  # a ${globals:...} interpolation in the file
    gpus(0)
    values["device"] = "cuda"
    with pytest.raises(ParameterError, match=r"export\.device: cuda asks for a GPU"):
        validate_group("export", values)


def test_precision_auto(gpus):
    gpus(0)
    assert resolve_precision("auto", CPU) == "fp32"
    assert [resolve_precision(p, CPU) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    gpus(1, bf16=True)
    assert resolve_precision("auto", CUDA) == "bf16"
    assert resolve_precision("fp32", CUDA) == "fp32"
    assert resolve_precision("auto", CPU) == "fp32"  # device: cpu on a GPU machine
    gpus(1, name="Tesla V100-SXM2-16GB", bf16=False)
    assert resolve_precision("auto", CUDA) == "fp32"
    assert resolve_precision("fp16", CUDA) == "fp16"
    with pytest.raises(ValueError, match=r"precision bf16: cuda:0 \(Tesla V100-SXM2-16GB\) has no native bf16"):
        resolve_precision("bf16", CUDA)


def test_compile_and_kernels_auto(gpus, monkeypatch):
    assert (resolve_compile("auto", CPU), resolve_compile("auto", CUDA)) == (False, True)
    assert (resolve_compile(True, CPU), resolve_compile(False, CUDA)) == (True, False)
    monkeypatch.setattr("xoron_pipelines.kernels.dispatch.triton_available", lambda: True)
    assert (resolve_kernels("auto", CPU), resolve_kernels("auto", CUDA), resolve_kernels(None, CUDA)) == (
        "torch",
        "triton",
        "triton",
    )
    assert (resolve_kernels("torch", CUDA), resolve_kernels("triton", CPU)) == ("torch", "triton")
    monkeypatch.setattr("xoron_pipelines.kernels.dispatch.triton_available", lambda: False)
    assert resolve_kernels("auto", CUDA) == "torch"


@pytest.mark.parametrize(
    ("name", "precision", "tf32", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", False, 989.5e12),
        ("NVIDIA H100 80GB HBM3", "fp32", False, 66.9e12),
        ("NVIDIA H100 80GB HBM3", "fp32", True, 494.7e12),
        ("NVIDIA H100 PCIe", "bf16", False, 756.5e12),
        ("NVIDIA H100 NVL", "bf16", False, 835.5e12),
        ("NVIDIA H200", "bf16", False, 989.5e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", False, 312e12),
        ("NVIDIA A100 80GB PCIe", "fp32", True, 156e12),
        ("NVIDIA L4", "bf16", False, 121e12),
        ("NVIDIA L40S", "bf16", False, 366.5e12),
        ("NVIDIA A10G", "fp16", False, 125e12),
        ("NVIDIA GeForce RTX 4090", "bf16", False, 165.2e12),
        ("Tesla V100-SXM2-16GB", "fp16", False, 125e12),
        ("Tesla V100-PCIE-32GB", "fp32", False, 14e12),
        ("Tesla T4", "fp16", False, 65e12),
    ],
)
def test_peak_flops_table(gpus, name, precision, tf32, expected):
    gpus(1, name=name)
    assert peak_flops(CUDA, precision, tf32) == expected


def test_peak_flops_cpu_and_unknown_gpu_warns_once(gpus, caplog):
    gpus(0)
    assert peak_flops(CPU, "fp32") == CPU_PEAK_FLOPS
    gpus(1, name="NVIDIA Imaginary X1")
    with caplog.at_level(logging.WARNING, logger="xoron_pipelines.device"):
        assert peak_flops(CUDA, "bf16") is None
        assert peak_flops(CUDA, "bf16") is None
    assert [r.getMessage() for r in caplog.records] == [
        "no peak FLOP/s known for NVIDIA Imaginary X1 at bf16: MFU is not logged (set tracking.peak_flops to a number)"
    ]
    gpus(1, name="Tesla V100-SXM2-16GB")
    assert peak_flops(CUDA, "bf16") is None  # a precision the GPU has no column for: no number either


def test_tf32_mode_sets_and_restores_the_cuda_flags_only_for_cuda():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32_mode(not before[0], CPU):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    for enabled in (True, False):
        with tf32_mode(enabled, CUDA):  # only flags: nothing runs on a device here
            assert torch.backends.cuda.matmul.allow_tf32 is enabled
            assert torch.backends.cudnn.allow_tf32 is enabled
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
