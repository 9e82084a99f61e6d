"""Preference pairs for DPO: ``prompt``, a correct ``chosen`` answer and a subtly wrong
``rejected`` one (last arithmetic step off, one printed number off, a confident fabrication
instead of "I don't know", or a tool call with a wrong argument)."""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Any

from .common import CITIES, FIRST_NAMES, WORDS, pick, wrap
from .programs import python_program, run_python
from .reasoning import cot_answer, cot_problem, idk_question
from .tools import TASKS, TOOL_SCHEMAS, call_text


def _off(rng: random.Random, value: int) -> int:
    return value + pick(rng, (-3, -2, -1, 1, 2, 3, 10))


def _arithmetic(rng: random.Random, difficulty: str) -> dict[str, Any]:
    _, question, work, answer, sentence = cot_problem(rng, difficulty)
    wrong = _off(rng, answer)
    bad = copy.deepcopy(work)
    bad.ops[-1][3] = wrong
    head, _, tail = sentence.rpartition(str(answer))
    return {
        "prompt": question,
        "chosen": cot_answer(work, sentence, difficulty),
        "rejected": cot_answer(bad, f"{head}{wrong}{tail}", difficulty),
        "category": "chain_of_thought",
        "metadata": {"kind": "arithmetic", "answer": answer, "rejected_answer": wrong},
    }


def _code_output(rng: random.Random, difficulty: str) -> dict[str, Any]:
    for _ in range(20):
        code = python_program(rng, difficulty, allow_error=False)
        stdout, _ = run_python(code)
        numbers = list(re.finditer(r"\d+", stdout))
        if numbers:
            break
    else:
        raise RuntimeError("no generated program printed a number in 20 tries")
    m = pick(rng, tuple(numbers))
    value = int(m.group())
    wrong_value = _off(rng, value) if value > 3 else value + 1  # stays non-negative
    wrong = f"{stdout[: m.start()]}{wrong_value}{stdout[m.end() :]}"
    return {
        "prompt": f"What does this Python code print?\n```python\n{code}```",
        "chosen": f"It prints:\n```\n{stdout}```",
        "rejected": f"It prints:\n```\n{wrong}```",
        "category": "code_execution",
        "metadata": {"kind": "code_output", "code": code, "stdout": stdout},
    }


def _fabrication(rng: random.Random, subkind: str) -> str:
    return {
        "fictional": f"It was established in {rng.randint(1850, 1990)}.",
        "future": f"{pick(rng, FIRST_NAMES)} {pick(rng, ('Ortega', 'Lindqvist', 'Okafor', 'Tanaka'))} won it.",
        "private": f"It is {pick(rng, WORDS)}{rng.randint(10, 99)}.",
        "missing_context": f"It is {rng.randint(2, 500)}, set on line {rng.randint(3, 80)}.",
        "unknowable": f"There are exactly {rng.randint(10**6, 10**9):,} of them.",
    }[subkind]


def _unanswerable(rng: random.Random, difficulty: str) -> dict[str, Any]:
    subkind, question, answer = idk_question(rng, difficulty)
    return {
        "prompt": question,
        "chosen": answer,
        "rejected": _fabrication(rng, subkind),
        "category": "anti_hallucination",
        "metadata": {"kind": "unanswerable", "subkind": subkind},
    }


def _tool(rng: random.Random, difficulty: str) -> dict[str, Any]:
    name = pick(rng, ("get_weather", "convert_currency", "create_event"))
    task = TASKS[name](rng, difficulty)
    bad = copy.deepcopy(task)
    if name == "get_weather":
        bad.arguments["city"] = pick(rng, tuple(c for c in CITIES if c != task.arguments["city"]))
    elif name == "convert_currency":
        args = bad.arguments
        args["from_currency"], args["to_currency"] = args["to_currency"], args["from_currency"]
    else:
        bad.arguments["day"] = pick(
            rng, tuple(d for d in ("Monday", "Tuesday", "Friday") if d != task.arguments["day"])
        )
    tools = wrap("tools", json.dumps([{"name": name, **TOOL_SCHEMAS[name]}]))
    return {
        "prompt": f"You can call these tools:\n{tools}\n{task.request}",
        "chosen": call_text(task, False),
        "rejected": call_text(bad, False),
        "category": "tool_use",
        "metadata": {"kind": "tool_argument", "arguments": task.arguments, "rejected_arguments": bad.arguments},
    }


KINDS = {"arithmetic": _arithmetic, "code_output": _code_output, "unanswerable": _unanswerable, "tool": _tool}


def preference(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """One preference pair of a random kind."""
    return KINDS[pick(rng, tuple(KINDS))](rng, difficulty)
