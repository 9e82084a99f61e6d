"""Fixtures shared by the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: one intra-op thread avoids spin-wait overhead on a busy 2-core runner.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
