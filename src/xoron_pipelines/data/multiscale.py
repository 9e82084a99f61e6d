"""Multi-scale training (seed 000 "Multi-Scale Training"): which image size, video size and frame
count a training step uses, and the resizing helpers the trainers apply.

A step draws one size for its whole batch (:func:`sample_image_size`, :func:`sample_video_shape`)
according to ``multi_scale_strategy``:

- ``random``: i.i.d. draws from ``*_scales`` with ``*_scale_probs``;
- ``progressive``: deterministic, the size grows with training progress ``p = step / total_steps``:
  the largest scale not above ``min + p * (max - min)`` (the smallest scale at the start, the
  largest at the end), so every run of the same length sees the same schedule;
- ``curriculum``: random, with the probabilities tilted towards small scales early and large ones
  late: ``probs_i * exp(CURRICULUM_TILT * (2p - 1) * z_i)`` renormalised, where ``z_i`` in [-1, 1] is
  the scale's rank position (smallest -1, largest +1); exactly ``*_scale_probs`` at mid-training.

``use_multi_scale: false`` always returns the base sizes (``image_base_size``, ``video_base_size``,
``video_base_frames``). ``*_min_*`` / ``*_max_*`` bound everything: a scale or a base size outside
them is a validation error naming the key, as are probabilities that do not sum to 1 or a list of
probabilities whose length differs from its scales'.

The defaults are sized for a 2-core CPU (the synth corpus renders 32x32 images and 8-frame clips);
seed 000's sizes (128..512 px, 8..32 frames) are reachable by setting the knobs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from xoron_pipelines.validation import StrictModel

#: strength of the curriculum's tilt: at the start the largest scale's weight is divided by e^(2*TILT)
#: relative to the smallest's (and multiplied by it at the end)
CURRICULUM_TILT = 1.5
_PROB_TOLERANCE = 1e-6

Pair = list[int]


class MultiScaleConfig(StrictModel):
    """Seed 000's multi-scale knobs, CPU-sized defaults. Sizes are (height, width) pairs in pixels."""

    use_multi_scale: bool = True
    image_scales: list[Pair] = Field(default_factory=lambda: [[16, 16], [24, 24], [32, 32], [40, 40], [48, 48]])
    image_scale_probs: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.4, 0.2, 0.1])
    image_min_size: int = Field(default=16, ge=1)
    image_max_size: int = Field(default=48, ge=1)
    image_base_size: int = Field(default=32, ge=1)
    video_scales: list[Pair] = Field(default_factory=lambda: [[16, 16], [24, 24], [32, 32]])
    video_scale_probs: list[float] = Field(default_factory=lambda: [0.25, 0.35, 0.4])
    video_min_size: int = Field(default=16, ge=1)
    video_max_size: int = Field(default=32, ge=1)
    video_base_size: int = Field(default=32, ge=1)
    video_frame_scales: list[int] = Field(default_factory=lambda: [4, 6, 8])
    video_frame_scale_probs: list[float] = Field(default_factory=lambda: [0.25, 0.35, 0.4])
    video_min_frames: int = Field(default=4, ge=1)
    video_max_frames: int = Field(default=8, ge=1)
    video_base_frames: int = Field(default=8, ge=1)
    multi_scale_strategy: Literal["random", "progressive", "curriculum"] = "random"

    @model_validator(mode="after")
    def _check(self) -> MultiScaleConfig:
        for prefix, lo_key, hi_key, base_key in (
            ("image", "image_min_size", "image_max_size", "image_base_size"),
            ("video", "video_min_size", "video_max_size", "video_base_size"),
            ("video_frame", "video_min_frames", "video_max_frames", "video_base_frames"),
        ):
            scales_key, probs_key = f"{prefix}_scales", f"{prefix}_scale_probs"
            scales, probs = getattr(self, scales_key), getattr(self, probs_key)
            lo, hi, base = getattr(self, lo_key), getattr(self, hi_key), getattr(self, base_key)
            if lo > hi:
                raise ValueError(f"{lo_key} ({lo}) is larger than {hi_key} ({hi})")
            if not lo <= base <= hi:
                raise ValueError(f"{base_key} ({base}) lies outside [{lo_key}, {hi_key}] = [{lo}, {hi}]")
            if not scales:
                raise ValueError(f"{scales_key} is empty")
            if len(probs) != len(scales):
                raise ValueError(
                    f"{probs_key} has {len(probs)} values but {scales_key} has {len(scales)}: give one per scale"
                )
            for scale in scales:
                dims = scale if isinstance(scale, list) else [scale]
                if isinstance(scale, list) and len(scale) != 2:
                    raise ValueError(f"{scales_key}: {scale} is not a (height, width) pair")
                if any(not lo <= d <= hi for d in dims):
                    raise ValueError(f"{scales_key}: {scale} lies outside [{lo_key}, {hi_key}] = [{lo}, {hi}]")
            if any(p < 0 for p in probs):
                raise ValueError(f"{probs_key}: probabilities must be >= 0, got {probs}")
            if abs(sum(probs) - 1.0) > _PROB_TOLERANCE:
                raise ValueError(f"{probs_key} must sum to 1, sums to {sum(probs):.6g}")
        return self


def _progress(step: int, total_steps: int) -> float:
    if total_steps <= 0 or step < 0:
        raise ValueError(f"need 0 <= step and total_steps > 0, got step={step}, total_steps={total_steps}")
    return min(step / max(total_steps - 1, 1), 1.0)


def _size_key(scale) -> float:
    return float(np.prod(scale))  # area (pixels) or frame count


def scale_probs(scales: list, probs: list[float], strategy: str, progress: float) -> np.ndarray:
    """The probability of each scale at training ``progress`` in [0, 1] for a random strategy
    (``random``: ``probs``; ``curriculum``: tilted from small to large, see the module doc)."""
    p = np.asarray(probs, dtype=np.float64)
    if strategy == "random" or len(scales) == 1:
        return p / p.sum()
    order = np.argsort([_size_key(s) for s in scales], kind="stable")
    z = np.empty(len(scales))
    z[order] = np.linspace(-1.0, 1.0, len(scales))
    w = p * np.exp(CURRICULUM_TILT * (2 * progress - 1) * z)
    return w / w.sum()


def _pick(scales: list, probs: list[float], lo: int, hi: int, cfg: MultiScaleConfig, step, total, rng):
    progress = _progress(step, total)
    if cfg.multi_scale_strategy == "progressive":
        cap = lo + progress * (hi - lo)
        ordered = sorted(scales, key=_size_key)
        fitting = [s for s in ordered if max(s if isinstance(s, list) else [s]) <= cap + 1e-9]
        return fitting[-1] if fitting else ordered[0]
    p = scale_probs(scales, probs, cfg.multi_scale_strategy, progress)
    return scales[int(rng.choice(len(scales), p=p))]


def sample_image_size(cfg: MultiScaleConfig, step: int, total_steps: int, rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) of the images of training step ``step`` of ``total_steps``."""
    if not cfg.use_multi_scale:
        return cfg.image_base_size, cfg.image_base_size
    h, w = _pick(
        cfg.image_scales, cfg.image_scale_probs, cfg.image_min_size, cfg.image_max_size, cfg, step, total_steps, rng
    )
    return int(h), int(w)


def sample_video_shape(
    cfg: MultiScaleConfig, step: int, total_steps: int, rng: np.random.Generator
) -> tuple[int, int, int]:
    """(frames, height, width) of the clips of training step ``step`` of ``total_steps``
    (frame count and frame size are drawn independently, each by its own scales)."""
    if not cfg.use_multi_scale:
        return cfg.video_base_frames, cfg.video_base_size, cfg.video_base_size
    frames = _pick(
        cfg.video_frame_scales,
        cfg.video_frame_scale_probs,
        cfg.video_min_frames,
        cfg.video_max_frames,
        cfg,
        step,
        total_steps,
        rng,
    )
    h, w = _pick(
        cfg.video_scales, cfg.video_scale_probs, cfg.video_min_size, cfg.video_max_size, cfg, step, total_steps, rng
    )
    return int(frames), int(h), int(w)


def image_sizes(cfg: MultiScaleConfig) -> list[tuple[int, int]]:
    """Every (height, width) :func:`sample_image_size` can return, in the order of
    ``image_scales`` (the base size alone when ``use_multi_scale`` is false)."""
    if not cfg.use_multi_scale:
        return [(cfg.image_base_size, cfg.image_base_size)]
    return list(dict.fromkeys((int(h), int(w)) for h, w in cfg.image_scales))


def video_sizes(cfg: MultiScaleConfig) -> tuple[list[int], list[tuple[int, int]]]:
    """Every frame count and every (height, width) :func:`sample_video_shape` can return, in the
    order of ``video_frame_scales`` / ``video_scales`` (the base frames and size alone when
    ``use_multi_scale`` is false)."""
    if not cfg.use_multi_scale:
        return [cfg.video_base_frames], [(cfg.video_base_size, cfg.video_base_size)]
    frames = list(dict.fromkeys(int(f) for f in cfg.video_frame_scales))
    return frames, list(dict.fromkeys((int(h), int(w)) for h, w in cfg.video_scales))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (h, w, 3), PIL bilinear (the same array back when already that size)."""
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {size}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image, mode="RGB").resize((w, h), Image.Resampling.BILINEAR))


def temporal_indices(frames: int, target: int) -> np.ndarray:
    """``target`` frame indices spread uniformly over ``frames`` (first and last included;
    repeats frames when ``target > frames``)."""
    if frames < 1 or target < 1:
        raise ValueError(f"frame counts must be positive, got {frames} -> {target}")
    return np.round(np.linspace(0, frames - 1, target)).astype(np.int64)


def resize_video(frames: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (t, h, w, 3): uniform temporal sampling, then each frame
    resized bilinearly."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    t, h, w = (int(v) for v in shape)
    picked = frames[temporal_indices(frames.shape[0], t)]
    return np.stack([resize_image(f, (h, w)) for f in picked])
