"""Node of the ``synth`` pipeline: generate every synthetic type, seeded and deterministic."""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import replace
from typing import Any, Callable

from tqdm.auto import tqdm

from xoron_pipelines.sandbox import isolation_mode

from .generators import code, conversation, gitops, preference, programs, reasoning, tools
from .params import SYNTH_TYPES, Params

log = logging.getLogger(__name__)

Generator = Callable[[random.Random, str], dict[str, Any]]

#: type -> (default seed-000 dataset category, generator)
GENERATORS: dict[str, tuple[str, Generator]] = {
    "chain_of_thought": ("chain_of_thought", reasoning.chain_of_thought),
    "tool_call": ("tool_use", tools.tool_call),
    "tool_call_multi_turn": ("tool_use", tools.tool_call_multi_turn),
    "anti_hallucination": ("anti_hallucination", reasoning.anti_hallucination),
    "code_exec_shell": ("code_execution", code.code_exec_shell),
    "code_exec_python": ("code_execution", code.code_exec_python),
    "code_exec_jupyter": ("code_execution", code.code_exec_jupyter),
    "fim": ("fim", code.fim),
    "git_diff": ("git_operations", gitops.git_diff),
    "git_commit": ("git_operations", gitops.git_commit),
    "file_ops": ("agentic", gitops.file_ops),
    "chat": ("conversation", conversation.chat_plain),
    "dialogue_summary": ("conversation", conversation.dialogue_summary),
    "preference": ("conversation", preference.preference),
}
assert tuple(GENERATORS) == SYNTH_TYPES, "every synth type needs a generator"

#: types whose generator runs Python programs in the sandbox
SANDBOXED_TYPES: tuple[str, ...] = ("code_exec_python", "code_exec_jupyter", "preference")


def generate_type(kind: str, count: int, seed: int, difficulty: dict[str, float]) -> list[dict[str, Any]]:
    """``count`` rows of type ``kind``. The random stream depends only on (seed, kind), so
    changing one type's count leaves every other type's rows unchanged."""
    default_category, generate = GENERATORS[kind]
    rng = random.Random(f"xoron-synth:{seed}:{kind}")
    levels, weights = list(difficulty), list(difficulty.values())
    rows = []
    for index in tqdm(range(count), desc=f"synth {kind}", leave=False, disable=count < 500):
        level = rng.choices(levels, weights)[0]
        fields = generate(rng, level)
        category = fields.pop("category", default_category)
        metadata = {"id": f"{kind}-{seed}-{index:06d}", **fields.pop("metadata", {})}
        rows.append({**fields, "type": kind, "category": category, "difficulty": level, "metadata": metadata})
    return rows


def manifest(partitions: dict[str, list[dict[str, Any]]], seed: int) -> dict[str, Any]:
    """Counts per type, category and difficulty of the generated corpus."""
    rows = [row for part in partitions.values() for row in part]
    return {
        "seed": seed,
        "total": len(rows),
        "by_type": {kind: len(part) for kind, part in partitions.items()},
        "by_category": dict(sorted(Counter(r["category"] for r in rows).items())),
        "by_difficulty": dict(sorted(Counter(r["difficulty"] for r in rows).items())),
    }


def generate_synthetic(params: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """All enabled types (count > 0) as partitions ``{type: rows}``, plus their manifest."""
    p = Params.model_validate(params)
    weights = p.difficulty.normalised()
    counts = p.counts.as_dict()
    limits = replace(programs.LIMITS, allow_weak_isolation=p.sandbox.allow_weak_isolation)
    if any(counts[kind] for kind in SANDBOXED_TYPES):
        isolation_mode(limits)  # refuse (SandboxUnavailableError) before any row is generated
    with programs.sandbox_session(limits):
        partitions = {kind: generate_type(kind, count, p.seed, weights) for kind, count in counts.items() if count > 0}
    report = manifest(partitions, p.seed)
    log.info("synth: %d rows over %d types (seed %d)", report["total"], len(partitions), p.seed)
    return partitions, report
