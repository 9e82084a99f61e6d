"""Generate every synthetic type, seeded and deterministic."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tqdm.auto import tqdm

from xoron_pipelines.sandbox import isolation_mode
from xoron_pipelines.synth.generators import code, conversation, gitops, preference, programs, reasoning, tools

Generator = Callable[[random.Random, str], dict[str, Any]]

#: type -> (default seed-000 dataset category, generator), in generation order. Each type becomes
#: one partition ``data/01_raw/synth/<type>.jsonl``.
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

#: every synthetic data type, in generation order
SYNTH_TYPES: tuple[str, ...] = tuple(GENERATORS)

#: types whose generator runs Python programs in the sandbox
SANDBOXED_TYPES: tuple[str, ...] = ("code_exec_python", "code_exec_jupyter", "preference")


def generate_type(kind: str, count: int, seed: int, difficulty: dict[str, float]) -> list[dict[str, Any]]:
    """``count`` rows of type ``kind``, each difficulty drawn with the weights ``difficulty``
    (level -> weight). The random stream depends only on (seed, kind), so changing one type's
    count leaves every other type's rows unchanged."""
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


def generate_all(
    counts: dict[str, int], seed: int, difficulty: dict[str, float], allow_weak_isolation: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Partitions ``{type: rows}`` of every type with ``counts[type] > 0``, in the order of
    ``counts``. Raises :class:`~xoron_pipelines.sandbox.SandboxUnavailableError` before any row
    when a sandboxed type is enabled and the kernel refuses isolation (unless
    ``allow_weak_isolation``)."""
    limits = replace(programs.LIMITS, allow_weak_isolation=allow_weak_isolation)
    if any(counts[kind] for kind in SANDBOXED_TYPES if kind in counts):
        isolation_mode(limits)  # refuse (SandboxUnavailableError) before any row is generated
    with programs.sandbox_session(limits):
        return {kind: generate_type(kind, count, seed, difficulty) for kind, count in counts.items() if count > 0}


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
