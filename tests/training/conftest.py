"""Training-engine tests run their tiny models on one intra-op thread.

With two pytest-xdist workers on two cores, torch's default thread pool oversubscribes the CPU
and spin-waits: a 100k-parameter forward/backward takes seconds instead of milliseconds.
(The subprocesses of test_resume.py set the same in resume_worker.py.)
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
