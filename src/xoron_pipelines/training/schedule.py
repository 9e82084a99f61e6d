"""Learning-rate schedules: linear warm-up, then cosine / linear decay or constant.

Conventions are those of ``transformers.optimization`` (the factor for optimizer step ``s``,
counted from 0, multiplies the peak learning rate):

* warm-up (``s < warmup``): ``s / warmup`` — the first step runs at lr 0, as in transformers;
* cosine: ``min + (1 - min) * 0.5 * (1 + cos(pi * p))`` with ``p = (s - warmup) / (total - warmup)``;
* linear: ``min + (1 - min) * (1 - p)`` (never below ``min``);
* constant: ``1``.

``min`` is ``min_lr_ratio`` (0 reproduces transformers' schedules exactly). The schedule is a small
callable object holding only numbers, so ``LambdaLR.state_dict()`` stays JSON-serialisable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

KINDS = ("cosine", "linear", "constant")


@dataclass
class WarmupDecay:
    """``step -> lr factor`` for one schedule kind (see the module docstring)."""

    kind: str
    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown lr schedule {self.kind!r}; expected one of {KINDS}")
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(
                f"need total_steps >= 1 and warmup_steps >= 0, got {self.total_steps}, {self.warmup_steps}"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay


def build_scheduler(
    optimizer: Optimizer, kind: str, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` over :class:`WarmupDecay`; call ``.step()`` once per optimizer step."""
    return LambdaLR(optimizer, WarmupDecay(kind, total_steps, warmup_steps, min_lr_ratio))
