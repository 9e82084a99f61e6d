"""Short clips of one moving object: direction, speed and whether it bounces off the far wall.

Rendered exactly like :mod:`.scenes` (fixed palette, no anti-aliasing), so :func:`analyse_clip`
tracks the object's centroid frame by frame and recovers colour, shape, direction, speed and
bounce from pixels alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from .scenes import BACKGROUND, COLOURS, SHAPES, Obj, _shape_of, classify_pixels, draw, majority

DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = {"slow": 0.3, "fast": 0.7}  # path length over the clip, as a fraction of the free track
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass(frozen=True)
class ClipSpec:
    size: tuple[int, int]  # (H, W)
    frames: int
    shape: str
    colour: str
    direction: str
    speed: str
    bounce: bool
    start: tuple[float, float]  # (x, y) of the first frame
    r: float

    def attributes(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def sample_clip(rng: np.random.Generator, size: tuple[int, int] = (32, 32), frames: int = 8) -> ClipSpec:
    """A random clip. A bouncing object starts close enough to the wall it moves towards to hit
    it within the first half of the clip; a non-bouncing one far enough never to reach it."""
    h, w = size
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    speed = list(SPEEDS)[rng.integers(len(SPEEDS))]
    bounce = bool(rng.integers(2))
    r = float(min(h, w) * 0.1)
    side = w if direction in ("left", "right") else h
    dx, dy = _STEP[direction]
    lo, hi = r + 1, side - r - 1
    travel = SPEEDS[speed] * (hi - lo)
    if bounce:  # the wall is reached after 20-50 % of the frames
        dist = travel * rng.uniform(0.2, 0.5)
    else:
        dist = min(travel + rng.uniform(0, max(hi - lo - travel, 0)), hi - lo)
    along = (hi - dist) if (dx + dy) > 0 else (lo + dist)  # start `dist` away from the wall ahead
    across_side = h if direction in ("left", "right") else w
    across = float(rng.uniform(r + 1, across_side - r - 1))
    start = (along, across) if direction in ("left", "right") else (across, along)
    return ClipSpec(
        (h, w),
        frames,
        SHAPES[rng.integers(len(SHAPES))],
        list(COLOURS)[rng.integers(len(COLOURS))],
        direction,
        speed,
        bounce,
        (float(start[0]), float(start[1])),
        r,
    )


def positions(spec: ClipSpec) -> list[tuple[float, float]]:
    """Centre of the object per frame (reflecting at the walls)."""
    h, w = spec.size
    dx, dy = _STEP[spec.direction]
    side = w if dx else h
    lo, hi = spec.r + 1, side - spec.r - 1
    v = SPEEDS[spec.speed] * (hi - lo) / max(spec.frames - 1, 1)
    x, y = spec.start
    pos, out = (x if dx else y), []
    sign = dx + dy
    for _ in range(spec.frames):
        out.append((pos, y) if dx else (x, pos))
        pos += sign * v
        if pos > hi or pos < lo:  # reflect
            pos = 2 * hi - pos if pos > hi else 2 * lo - pos
            sign = -sign
    return out


def render_clip(spec: ClipSpec) -> np.ndarray:
    """uint8 (T, H, W, 3)."""
    from PIL import Image, ImageDraw

    h, w = spec.size
    frames = []
    for cx, cy in positions(spec):
        img = Image.new("RGB", (w, h), BACKGROUND)
        draw(ImageDraw.Draw(img), spec.shape, COLOURS[spec.colour], Obj(cx, cy, spec.r))
        frames.append(np.asarray(img))
    return np.stack(frames)


def describe(spec: ClipSpec) -> str:
    text = f"a {spec.colour} {spec.shape} moves {spec.direction} {'quickly' if spec.speed == 'fast' else 'slowly'}"
    return text + (" and bounces back" if spec.bounce else "")


def qa_pairs(spec: ClipSpec, rng: np.random.Generator | None = None) -> list[tuple[str, str, list[str]]]:
    return [
        ("Which way does the shape move?", spec.direction, list(DIRECTIONS)),
        ("How fast does it move?", spec.speed, list(SPEEDS)),
        ("Does it bounce?", "yes" if spec.bounce else "no", ["yes", "no"]),
        ("What colour is the shape?", spec.colour, list(COLOURS)),
        ("What shape is it?", spec.shape, list(SHAPES)),
    ]


def analyse_clip(frames: np.ndarray) -> dict:
    """Track the largest non-background region per frame; return ``colour``, ``shape``,
    ``direction`` (of the first moves), ``speed`` (slow / fast by the median step times the
    frames over the free track, threshold halfway between the two speeds), ``bounce`` (the motion reverses) and the ``track``."""
    t, h, w = frames.shape[:3]
    track, colours, shapes = [], [], []
    for frame in frames:
        labels = classify_pixels(frame)
        ys, xs = np.nonzero(labels >= 0)
        if ys.size == 0:
            track.append(None)
            continue
        ci = np.bincount(labels[ys, xs]).argmax()
        ys, xs = np.nonzero(labels == ci)
        colours.append(list(COLOURS)[ci])
        shapes.append(_shape_of(ys.size / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))))
        track.append((float(xs.mean()), float(ys.mean())))
    found = [p for p in track if p is not None]
    if len(found) < 2:
        return {"colour": None, "shape": None, "direction": None, "speed": None, "bounce": None, "track": track}
    steps = np.diff(np.array(found), axis=0)  # (T-1, 2): dx, dy per frame
    horizontal = np.abs(steps[:, 0]).sum() >= np.abs(steps[:, 1]).sum()
    axis_steps = steps[:, 0] if horizontal else steps[:, 1]
    moving = axis_steps[np.abs(axis_steps) > 1e-6]
    first = moving[0] if moving.size else 0.0
    direction = ("right" if first > 0 else "left") if horizontal else ("down" if first > 0 else "up")
    r = float(np.sqrt(max(np.count_nonzero(classify_pixels(frames[0]) >= 0), 1) / np.pi))  # ~ radius
    free = (w if horizontal else h) - 2 * r - 2
    path = float(np.median(np.abs(axis_steps))) * (t - 1) / free  # robust to the reflecting step
    threshold = (SPEEDS["slow"] + SPEEDS["fast"]) / 2
    bounce = bool(moving.size and (np.sign(moving) != np.sign(first)).any())
    return {
        "colour": majority(colours),
        "shape": majority(shapes),
        "direction": direction,
        "speed": "fast" if path > threshold else "slow",
        "bounce": bounce,
        "track": track,
    }
