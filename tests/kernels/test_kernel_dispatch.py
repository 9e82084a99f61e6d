"""kernels: auto | triton | torch — resolution rules and routing of every public function."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from xoron_pipelines import kernels
from xoron_pipelines.kernels import dispatch
from xoron_pipelines.kernels.dispatch import resolve_impl

CPU = torch.zeros(1)
CUDA_LIKE = SimpleNamespace(is_cuda=True)


def test_auto_uses_torch_on_cpu_and_triton_on_cuda():
    assert resolve_impl("auto", CPU) == "torch"
    assert resolve_impl("auto", CUDA_LIKE, None, CUDA_LIKE) == "triton"
    assert resolve_impl("auto", CUDA_LIKE, CPU) == "torch"
    assert resolve_impl("torch", CUDA_LIKE) == "torch"


def test_auto_falls_back_to_torch_without_triton(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert resolve_impl("auto", CUDA_LIKE) == "torch"
    with pytest.raises(RuntimeError, match="not installed"):
        resolve_impl("triton", CUDA_LIKE)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("triton", CPU) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_impl("triton", CPU)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.rms_norm(torch.ones(2, 3), torch.ones(3), impl="triton")


def test_unknown_impl_is_a_value_error():
    with pytest.raises(ValueError, match="'cuda'"):
        resolve_impl("cuda", CPU)
    with pytest.raises(ValueError, match="'fast'"):
        kernels.swiglu(torch.ones(2), torch.ones(2), impl="fast")


CALLS = {
    "rms_norm": lambda impl: kernels.rms_norm(torch.ones(2, 3), torch.ones(3), 1e-6, impl=impl),
    "apply_rope": lambda impl: kernels.apply_rope(
        torch.ones(1, 1, 2, 4), torch.ones(1, 2, 4), torch.ones(1, 2, 4), impl=impl
    ),
    "swiglu": lambda impl: kernels.swiglu(torch.ones(3), torch.ones(3), impl=impl),
    "fused_linear_cross_entropy": lambda impl: kernels.fused_linear_cross_entropy(
        torch.ones(2, 3), torch.ones(4, 3), torch.tensor([0, 1]), impl=impl
    ),
    "router_topk": lambda impl: kernels.router_topk(torch.rand(2, 4), None, 2, impl=impl),
    "quantize_int8_rows": lambda impl: kernels.quantize_int8_rows(torch.ones(2, 3), impl=impl),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize(("impl", "expected"), [("triton", "triton"), ("torch", "torch"), ("auto", "torch")])
def test_public_functions_route_by_impl(monkeypatch, name, impl, expected):
    """Replace both implementations with recorders: the knob must pick the expected one on CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    called = []
    for which in ("triton", "torch"):
        monkeypatch.setattr(dispatch, f"{name}_{which}", lambda *a, which=which, **k: called.append(which))
    CALLS[name](impl)
    assert called == [expected]
