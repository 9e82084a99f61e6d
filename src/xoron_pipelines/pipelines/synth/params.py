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


class SplitCounts(StrictModel):
    """Items per split (0 = none)."""

    train: int = Field(default=0, ge=0)
    heldout: int = Field(default=0, ge=0)

    def as_dict(self) -> dict[str, int]:
        return {"train": self.train, "heldout": self.heldout}


def _size_field(default: tuple[int, int]):
    return Field(default_factory=lambda: list(default), min_length=2, max_length=2)


class _Visual(StrictModel):
    size: list[int] = _size_field((32, 32))

    @model_validator(mode="after")
    def _sizes(self):
        if min(self.size) < 16 or max(self.size) > 1024:
            raise ValueError(f"size {self.size}: height and width must lie in [16, 1024] pixels")
        return self


class MediaImage(_Visual):
    """Rendered scenes (synth/media/scenes.py): one row per scene, with one question."""

    counts: SplitCounts = Field(default_factory=lambda: SplitCounts(train=2000, heldout=300))


class MediaVideo(_Visual):
    """Clips of one moving object (synth/media/clips.py): one row per clip, with one question."""

    counts: SplitCounts = Field(default_factory=lambda: SplitCounts(train=600, heldout=150))
    frames: int = Field(default=8, ge=2, le=256)


class MediaAudio(StrictModel):
    """Spoken phrases of the synthetic vocabulary (synth/media/speech.py), 16 kHz."""

    counts: SplitCounts = Field(default_factory=lambda: SplitCounts(train=1200, heldout=300))
    speakers: SplitCounts = Field(default_factory=lambda: SplitCounts(train=16, heldout=4))
    max_words: int = Field(default=3, ge=1, le=5)

    @model_validator(mode="after")
    def _speakers(self) -> MediaAudio:
        for split in ("train", "heldout"):
            if getattr(self.counts, split) and not getattr(self.speakers, split):
                raise ValueError(f"speakers.{split} must be >= 1 when counts.{split} > 0")
        return self


class Media(StrictModel):
    """The procedural media corpus (synth_media_image / _video / _audio)."""

    seed: Seed = 42
    image: MediaImage = Field(default_factory=MediaImage)
    video: MediaVideo = Field(default_factory=MediaVideo)
    audio: MediaAudio = Field(default_factory=MediaAudio)
    progress: bool = True


class Params(StrictModel):
    """Synthetic data generation: seed, rows per type, difficulty mix, sandbox; media corpus."""

    seed: Seed = 42
    counts: Counts = Field(default_factory=Counts)
    difficulty: Difficulty = Field(default_factory=Difficulty)
    sandbox: Sandbox = Field(default_factory=Sandbox)
    media: Media = Field(default_factory=Media)
