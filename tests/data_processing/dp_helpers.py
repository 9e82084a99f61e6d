"""Helpers of the data_processing tests: params builder, small corpora."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xoron_pipelines.pipelines.data_processing.params import Params


def make_params(sources: list[dict[str, Any]], **overrides: Any) -> Params:
    """Params with ``sources`` and nested ``overrides`` (e.g. ``cleaning={"min_chars": 0}``)."""
    values: dict[str, Any] = {"sources": sources, "progress": False}
    values.update(overrides)
    return Params.model_validate(values)


def jsonl_source(path: Path, name: str = "src", **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": str(path), "format": "jsonl", "text_field": "text", "category": "document", **extra}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def prose_docs(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct English-like documents (no near-duplicates among them)."""
    import random

    rng = random.Random(seed)
    words = (
        "data model token train corpus python library function value return error string list "
        "number object class method module import file line text write read open close system "
        "process thread memory cache index query result buffer stream batch shard parquet arrow"
    ).split()
    return [f"Document {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) + "." for i in range(n)]
