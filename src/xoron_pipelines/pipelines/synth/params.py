"""Schema of ``conf/base/parameters_synth.yml`` (top-level key ``synth``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, create_model, model_validator

from xoron_pipelines.synth import SYNTH_TYPES
from xoron_pipelines.validation import Seed, StrictModel

DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")

DEFAULT_COUNT = 200

_CountsBase = create_model(
    "_CountsBase",
    __base__=StrictModel,
    **{name: (int, Field(default=DEFAULT_COUNT, ge=0)) for name in SYNTH_TYPES},
)


class Counts(_CountsBase):
    """Rows to generate per type; 0 disables a type."""

    @model_validator(mode="before")
    @classmethod
    def _known_types(cls, values: Any) -> Any:
        if isinstance(values, dict):
            unknown = sorted(set(values) - set(SYNTH_TYPES))
            if unknown:
                raise ValueError(f"unknown synthetic data type(s) {unknown}; valid types are {list(SYNTH_TYPES)}")
        return values

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in SYNTH_TYPES}


class Difficulty(StrictModel):
    """Relative weights of the difficulty levels (non-negative, not all zero; normalised)."""

    easy: float = Field(default=0.3, ge=0)
    medium: float = Field(default=0.5, ge=0)
    hard: float = Field(default=0.2, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> Difficulty:
        if self.easy + self.medium + self.hard <= 0:
            raise ValueError("at least one difficulty weight must be positive")
        return self

    def normalised(self) -> dict[str, float]:
        total = self.easy + self.medium + self.hard
        return {level: getattr(self, level) / total for level in DIFFICULTIES}


class Sandbox(StrictModel):
    """Where the generated Python programs run (:mod:`xoron_pipelines.sandbox`)."""

    # false: refuse to run them where the OS offers no namespace isolation
    allow_weak_isolation: bool = False


class Params(StrictModel):
    """Synthetic data generation: seed, rows per type, difficulty mix, sandbox."""

    seed: Seed = 42
    counts: Counts = Field(default_factory=Counts)
    difficulty: Difficulty = Field(default_factory=Difficulty)
    sandbox: Sandbox = Field(default_factory=Sandbox)
