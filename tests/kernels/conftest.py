"""Shared fixtures for the kernel tests.

Triton kernels run compiled on a GPU when one is present, otherwise through Triton's CPU
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported). Parity
checks are fp32 with explicit tolerances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _fwd_bwd(fn: Callable, inputs: Sequence[torch.Tensor], seed: int):
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    diff = [o for o in outs if o.requires_grad]
    cots = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in diff]
    wrt = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(diff, wrt, cots) if diff else ()
    return outs, grads


@pytest.fixture(scope="session")
def check_parity() -> Callable:
    """check_parity(fn_a, fn_b, inputs, atol, rtol): outputs and input-gradients agree.

    Both functions get fresh copies of ``inputs`` (those with requires_grad are differentiated)
    and the same random cotangents, so forward values and vector-Jacobian products are compared.
    """

    def check(fn_a: Callable, fn_b: Callable, inputs: Sequence[torch.Tensor], atol: float, rtol: float) -> None:
        outs_a, grads_a = _fwd_bwd(fn_a, inputs, seed=1234)
        outs_b, grads_b = _fwd_bwd(fn_b, inputs, seed=1234)
        assert len(outs_a) == len(outs_b) and len(grads_a) == len(grads_b)
        for a, b in zip(outs_a, outs_b):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)

    return check
