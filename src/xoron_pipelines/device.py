"""The one device resolver: a ``device`` parameter (``auto | cpu | cuda | cuda:N``) -> ``torch.device``.

Every pipeline that runs a model takes its device from here (evaluation, the latent model, the
embedding-cache encoder), so ``auto`` means the same everywhere: the first CUDA device when one is
visible, else the CPU. An explicit ``cuda`` / ``cuda:N`` on a machine without that GPU is an error
naming the parameter, raised before any work.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

#: what a ``device`` parameter accepts (validated by the schemas that use :data:`DeviceSpec`)
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"

#: the type of every ``device`` knob
DeviceSpec = Annotated[str, Field(pattern=DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N")]


def resolve_device(spec: str | None = "auto", key: str = "device") -> torch.device:
    """``auto`` (or None): ``cuda`` when a CUDA device is visible, else ``cpu``; ``cpu``; ``cuda``
    or ``cuda:N``: that GPU, or a ``ValueError`` naming ``key`` when it is not there."""
    spec = spec or "auto"
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"{key}: {spec!r} is not a device this project uses (auto, cpu, cuda, cuda:N)")
    if not torch.cuda.is_available():
        raise ValueError(f"{key} is {spec} but no CUDA device is available; use auto or cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{key} is {spec} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
