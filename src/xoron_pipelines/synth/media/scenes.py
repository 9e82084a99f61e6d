"""Rendered scenes: ``count`` copies of one shape in one colour, in one wedge of the canvas (the
triangle between the centre and the left / right / top / bottom side).

Rendering is exact (no anti-aliasing, a fixed palette on a plain background), so
:func:`analyse_scene` recovers colour, shape, count and position from pixels alone: the checker of
generated images and the ground truth of captions / questions are the same geometry.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (150, 60, 200),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
NUMBERS = ("one", "two", "three")
BACKGROUND = (235, 235, 235)


@dataclass(frozen=True)
class Obj:
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class SceneSpec:
    size: tuple[int, int]  # (H, W)
    shape: str
    colour: str
    position: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)

    @property
    def count(self) -> int:
        return len(self.objects)

    def attributes(self) -> str:
        return json.dumps({**asdict(self), "count": self.count}, sort_keys=True)


def in_wedge(position: str, x: float, y: float, r: float, h: int, w: int) -> bool:
    """Whether a disc of radius ``r`` at (x, y) lies inside the canvas and inside the wedge of
    ``position``: the triangle between the canvas centre and that side, so the centroid of any
    objects inside it is inside it too (what makes :func:`analyse_scene` exact)."""
    if not (r <= x <= w - r and r <= y <= h - r):
        return False
    dx, dy = (x - w / 2) / (w / 2), (y - h / 2) / (h / 2)  # in [-1, 1] both ways
    along, across = {"left": (-dx, dy), "right": (dx, dy), "top": (-dy, dx), "bottom": (dy, dx)}[position]
    margin = (along - abs(across)) / np.sqrt(2) * min(h, w) / 2
    return margin >= r


def _wedge_margin(position: str, x: np.ndarray, y: np.ndarray, h: int, w: int) -> np.ndarray:
    """Vectorised :func:`in_wedge`: the largest radius a disc at (x, y) may have (<= 0: outside)."""
    dx, dy = (x - w / 2) / (w / 2), (y - h / 2) / (h / 2)
    along, across = {"left": (-dx, dy), "right": (dx, dy), "top": (-dy, dx), "bottom": (dy, dx)}[position]
    margin = (along - np.abs(across)) / np.sqrt(2) * min(h, w) / 2
    return np.minimum.reduce([margin, x, w - x, y, h - y])


def _place(rng: np.random.Generator, position: str, count: int, r: float, h: int, w: int, tries: int = 64):
    """``count`` centres inside the wedge with room for radius ``r + 1``, pairwise more than
    ``2.7 r + 2`` apart (objects never touch), or None: each try draws 256 candidate points,
    keeps those inside the wedge, then picks one at random ``count`` times, each time removing
    the candidates too close to it (vectorised)."""
    gap = 2.7 * r + 2
    for _ in range(tries):
        xs, ys = rng.uniform(0, w, 256), rng.uniform(0, h, 256)
        pts = np.stack([xs, ys], axis=1)[_wedge_margin(position, xs, ys, h, w) >= r + 1 - 1e-9]
        picked = []
        while pts.size and len(picked) < count:
            p = pts[rng.integers(len(pts))]
            picked.append((float(p[0]), float(p[1])))
            pts = pts[np.hypot(pts[:, 0] - p[0], pts[:, 1] - p[1]) > gap]
        if len(picked) == count:
            return picked
    return None


@lru_cache(maxsize=64)
def max_radius(size: tuple[int, int], position: str) -> float:
    """A radius (at most 9 % of the shorter side) at which three objects fit easily in the wedge of
    ``position``: 95 % of the largest one a fixed-seed search finds (bisection to 0.1 px; cached
    per canvas)."""
    h, w = size
    lo, hi = 1.0, min(h, w) * 0.09
    if _place(np.random.default_rng(0), position, len(NUMBERS), hi, h, w, tries=256) is not None:
        return hi
    while hi - lo > 0.1:
        mid = (lo + hi) / 2
        found = _place(np.random.default_rng(0), position, len(NUMBERS), mid, h, w, tries=256)
        lo, hi = (mid, hi) if found is not None else (lo, mid)
    return 0.95 * lo  # a margin, so that a random search finds a placement quickly


def sample_scene(rng: np.random.Generator, size: tuple[int, int] = (64, 64)) -> SceneSpec:
    """A random scene: shape, colour, wedge and count (1-3, uniform: every count is placed), the
    objects all inside the wedge and not touching. The radius is drawn in 7-9 % of the shorter
    side, capped at the largest radius at which three objects fit in that wedge
    (:func:`max_radius`), for every count alike, so object size carries no cue about the count
    (on a 32x32 canvas the cap is ~7.5 %)."""
    h, w = size
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    count = int(rng.integers(1, len(NUMBERS) + 1))
    r = min(float(min(h, w) * rng.uniform(0.07, 0.09)), max_radius((h, w), position))
    while (centres := _place(rng, position, count, r, h, w)) is None:  # rare: the cap was found by search
        if r < 1.0:
            raise ValueError(f"cannot place {count} objects in the {position} wedge of a {h}x{w} canvas")
        r *= 0.97
    objs = tuple(Obj(float(x), float(y), r) for x, y in centres)
    return SceneSpec(size=(h, w), shape=shape, colour=colour, position=position, objects=objs)


def draw(canvas, shape: str, colour: tuple[int, int, int], o: Obj) -> None:
    """Draw one object on a PIL ``ImageDraw`` canvas (shared with :mod:`.clips`)."""
    if shape == "circle":
        canvas.ellipse([o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r], fill=colour)
    elif shape == "square":
        s = o.r * 0.9
        canvas.rectangle([o.cx - s, o.cy - s, o.cx + s, o.cy + s], fill=colour)
    else:
        canvas.polygon(
            [(o.cx, o.cy - o.r), (o.cx - o.r, o.cy + o.r * 0.8), (o.cx + o.r, o.cy + o.r * 0.8)], fill=colour
        )


def render_scene(spec: SceneSpec) -> np.ndarray:
    """uint8 (H, W, 3)."""
    from PIL import Image, ImageDraw

    h, w = spec.size
    img = Image.new("RGB", (w, h), BACKGROUND)
    canvas = ImageDraw.Draw(img)
    for o in spec.objects:
        draw(canvas, spec.shape, COLOURS[spec.colour], o)
    return np.asarray(img).copy()


def describe(spec: SceneSpec) -> str:
    noun = spec.shape if spec.count == 1 else spec.shape + "s"
    where = f"on the {spec.position}" if spec.position in ("left", "right") else f"at the {spec.position}"
    return f"{NUMBERS[spec.count - 1]} {spec.colour} {noun} {where}"


def qa_pairs(spec: SceneSpec, rng: np.random.Generator | None = None) -> list[tuple[str, str, list[str]]]:
    """(question, answer, choices) about colour, shape, count and position (choices in a fixed
    order, so the position of the right answer carries no cue)."""
    return [
        ("What colour are the shapes?", spec.colour, list(COLOURS)),
        ("What shape are they?", spec.shape, list(SHAPES)),
        ("How many shapes are there?", NUMBERS[spec.count - 1], list(NUMBERS)),
        ("Where are the shapes?", spec.position, list(POSITIONS)),
    ]


def classify_pixels(image: np.ndarray, tolerance: float = 60.0) -> np.ndarray:
    """Palette index per pixel (-1 = background or unclear): nearest palette colour within
    ``tolerance`` (Euclidean RGB distance), which also reads generated, slightly noisy images."""
    px = image.reshape(-1, 3).astype(np.float32)
    palette = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)
    dist = np.linalg.norm(px[:, None, :] - palette[None], axis=-1)
    idx = dist.argmin(axis=1)
    idx[dist.min(axis=1) > tolerance] = 0
    return (idx - 1).reshape(image.shape[:2])


def majority(values: list[str]) -> str:
    """The most frequent value; a tie goes to the one seen first (the same answer in every
    process, unlike ``max(set(values), key=values.count)``, whose tie-break follows string hashing)."""
    return Counter(values).most_common(1)[0][0]


def _shape_of(fill: float) -> str:
    """Fill ratio of the bounding box: square ~1, circle ~pi/4, triangle ~1/2."""
    return "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"


def analyse_scene(image: np.ndarray, min_area_frac: float = 0.002) -> dict:
    """Objects found in ``image`` (uint8 H, W, 3) and the scene's attributes: the dominant
    ``colour``, the majority ``shape``, ``count`` and the ``position`` of their centroid (the half
    it lies in, by the larger offset from the centre); ``None`` values when nothing is found."""
    from scipy import ndimage

    h, w = image.shape[:2]
    labels = classify_pixels(image)
    objects = []
    for ci, name in enumerate(COLOURS):
        comp, n = ndimage.label(labels == ci)
        for k in range(1, n + 1):
            ys, xs = np.nonzero(comp == k)
            if ys.size < max(4, min_area_frac * h * w):
                continue
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            shape = _shape_of(ys.size / box)
            objects.append(
                {"colour": name, "shape": shape, "cx": float(xs.mean()), "cy": float(ys.mean()), "area": int(ys.size)}
            )
    if not objects:
        return {"objects": [], "colour": None, "shape": None, "count": 0, "position": None}
    area = {c: sum(o["area"] for o in objects if o["colour"] == c) for c in COLOURS}
    colour = max(area, key=area.get)
    same = sorted((o for o in objects if o["colour"] == colour), key=lambda o: -o["area"])
    shapes = [o["shape"] for o in same]  # largest first: a tie goes to the largest object's shape
    cx = np.mean([o["cx"] for o in same]) / w - 0.5  # the wedge of the centroid (see in_wedge)
    cy = np.mean([o["cy"] for o in same]) / h - 0.5
    position = ("right" if cx > 0 else "left") if abs(cx) >= abs(cy) else ("bottom" if cy > 0 else "top")
    return {
        "objects": objects,
        "colour": colour,
        "shape": majority(shapes),
        "count": len(same),
        "position": position,
    }
