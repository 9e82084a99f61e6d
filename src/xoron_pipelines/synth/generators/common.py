"""Shared vocabulary and helpers of the synthetic generators."""

from __future__ import annotations

import random
from typing import Any

from xoron_pipelines.tokens import block

FIRST_NAMES = (
    "Alice",
    "Bob",
    "Carmen",
    "Dmitri",
    "Esther",
    "Farid",
    "Grace",
    "Hiroshi",
    "Ines",
    "Jamal",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Oskar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Viktor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
    "Amara",
    "Bruno",
    "Chloe",
    "Diego",
)
CITIES = (
    "Lisbon",
    "Nairobi",
    "Osaka",
    "Toronto",
    "Lyon",
    "Krakow",
    "Austin",
    "Melbourne",
    "Bogota",
    "Helsinki",
    "Seoul",
    "Cairo",
    "Porto",
    "Denver",
    "Mumbai",
    "Reykjavik",
    "Santiago",
    "Munich",
)
ITEMS = (
    ("notebook", "notebooks"),
    ("pencil", "pencils"),
    ("apple", "apples"),
    ("ticket", "tickets"),
    ("book", "books"),
    ("mug", "mugs"),
    ("plant", "plants"),
    ("battery", "batteries"),
    ("sandwich", "sandwiches"),
    ("cable", "cables"),
    ("poster", "posters"),
    ("candle", "candles"),
)
WORDS = (
    "apple",
    "river",
    "cloud",
    "stone",
    "maple",
    "ember",
    "falcon",
    "harbor",
    "island",
    "jungle",
    "lantern",
    "meadow",
    "nectar",
    "orbit",
    "pepper",
    "quartz",
    "rocket",
    "saddle",
    "tulip",
    "violet",
    "walnut",
    "yellow",
    "zephyr",
    "bridge",
    "canyon",
    "dragon",
    "forest",
    "garden",
)
VAR_NAMES = (
    "values",
    "items",
    "data",
    "numbers",
    "scores",
    "counts",
    "records",
    "samples",
    "entries",
    "readings",
    "prices",
    "weights",
    "totals",
    "points",
)
FUNC_VERBS = ("compute", "calculate", "get", "find", "build", "make", "count", "sum")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are Xoron, a concise and careful AI assistant.",
    "You are a helpful coding assistant. Answer precisely.",
    "You are an assistant that thinks step by step before answering.",
    "You are a friendly assistant. Keep answers short and correct.",
)

# difficulty -> (low, high) for "small" operands
RANGES = {"easy": (2, 12), "medium": (5, 60), "hard": (12, 400)}


def pick(rng: random.Random, seq):
    """One element of ``seq`` (a tuple) chosen with ``rng``."""
    return seq[rng.randrange(len(seq))]


def names(rng: random.Random, k: int) -> list[str]:
    """``k`` distinct first names."""
    return rng.sample(FIRST_NAMES, k)


def num(rng: random.Random, difficulty: str, scale: int = 1) -> int:
    """A positive integer whose size grows with difficulty."""
    lo, hi = RANGES[difficulty]
    return rng.randint(lo, hi) * scale


def wrap(name: str, content: str, newline: bool = True) -> str:
    """``content`` inside the paired block ``name`` (e.g. ``think``)."""
    open_, close = block(name)
    if newline:
        return f"{open_}\n{content}\n{close}"
    return f"{open_}{content}{close}"


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def chat(rng: random.Random, *turns: tuple[str, str], system: bool | None = None) -> list[dict[str, Any]]:
    """Messages from (role, content) turns, with a random system prompt half of the time."""
    use_system = rng.random() < 0.5 if system is None else system
    out = [msg("system", pick(rng, SYSTEM_PROMPTS))] if use_system else []
    return out + [msg(role, content) for role, content in turns]
