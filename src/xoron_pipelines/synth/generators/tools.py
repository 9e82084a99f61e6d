"""Tool-calling conversations: tool schemas in the system prompt, ``<|tool_call|>`` blocks
with JSON ``{"name", "arguments"}``, tool results as ``tool`` messages, grounded final answers.

Tool results are produced by small deterministic fake tools whose arithmetic is real
(calculator, currency conversion, temperature units), so final answers agree with them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from .common import CITIES, SYSTEM_PROMPTS, WORDS, msg, names, num, pick, wrap

TOOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "get_weather": {
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
    "calculator": {
        "description": "Evaluate an integer arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
    "convert_currency": {
        "description": "Convert an amount between currencies at today's rate.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "from_currency": {"type": "string"},
                "to_currency": {"type": "string"},
            },
            "required": ["amount", "from_currency", "to_currency"],
        },
    },
    "search_files": {
        "description": "List files in a directory whose name contains a pattern.",
        "parameters": {
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "directory": {"type": "string"}},
            "required": ["pattern"],
        },
    },
    "create_event": {
        "description": "Create a calendar event.",
        "parameters": {
            "type": "object",
            "properties": {"title": {"type": "string"}, "day": {"type": "string"}, "time": {"type": "string"}},
            "required": ["title", "day", "time"],
        },
    },
    "send_email": {
        "description": "Send an email.",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to", "subject", "body"],
        },
    },
}

# units of currency per 1 USD (a fixed table: the fake tool is deterministic)
RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "CAD": 1.36, "CHF": 0.88}


def _money(amount: float) -> str:
    """``15366.0`` -> ``"15366"``, ``20897.76`` -> ``"20897.76"``."""
    return f"{amount:.2f}".rstrip("0").rstrip(".")


class Task:
    """One tool use: the user's request, the call, the tool's result and the final answer."""

    def __init__(self, request: str, name: str, arguments: dict[str, Any], result: Any, answer: str):
        self.request, self.name, self.arguments, self.result, self.answer = request, name, arguments, result, answer


def _weather(rng: random.Random, difficulty: str, city: str | None = None) -> Task:
    city = city or pick(rng, CITIES)
    celsius = rng.randint(-10, 35)
    unit = "fahrenheit" if difficulty == "hard" and rng.random() < 0.5 else "celsius"
    temp = round(celsius * 9 / 5 + 32) if unit == "fahrenheit" else celsius
    cond = pick(rng, ("sunny", "cloudy", "light rain", "windy", "snow"))
    args = {"city": city, "unit": unit} if unit == "fahrenheit" else {"city": city}
    symbol = "°F" if unit == "fahrenheit" else "°C"
    ask = " in Fahrenheit" if unit == "fahrenheit" else ""
    return Task(
        f"What's the weather like in {city} right now{ask}?",
        "get_weather",
        args,
        {"city": city, "temperature": temp, "unit": unit, "conditions": cond},
        f"It is currently {temp}{symbol} and {cond} in {city}.",
    )


def _calculator(rng: random.Random, difficulty: str) -> Task:
    a, b, c = num(rng, difficulty, 7), num(rng, difficulty), num(rng, "easy")
    expression, value = pick(
        rng,
        (
            (f"{a} * {b} + {c}", a * b + c),
            (f"({a} + {b}) * {c}", (a + b) * c),
            (f"{a} * {b} - {c}", a * b - c),
        ),
    )
    return Task(
        f"Can you calculate {expression} for me?",
        "calculator",
        {"expression": expression},
        {"result": value},
        f"{expression} = {value}.",
    )


def _currency(rng: random.Random, difficulty: str, amount: float | None = None, src: str | None = None) -> Task:
    src = src or pick(rng, tuple(RATES))
    dst = pick(rng, tuple(c for c in RATES if c != src))
    amount = amount if amount is not None else float(num(rng, difficulty, 10))
    converted = round(amount / RATES[src] * RATES[dst], 2)
    return Task(
        f"How much is {_money(amount)} {src} in {dst}?",
        "convert_currency",
        {"amount": amount, "from_currency": src, "to_currency": dst},
        {"amount": converted, "currency": dst},
        f"{_money(amount)} {src} is about {converted:.2f} {dst}.",
    )


def _search(rng: random.Random, difficulty: str) -> Task:
    word = pick(rng, WORDS)
    directory = pick(rng, ("src", "docs", "tests", "scripts"))
    hits = sorted(f"{directory}/{w}_{word}.py" for w in rng.sample(WORDS, rng.randint(0, 3)))
    answer = (
        f"I found {len(hits)} matching file(s): " + ", ".join(hits) + "."
        if hits
        else f"No file in {directory}/ has '{word}' in its name."
    )
    return Task(
        f"Which files in {directory}/ have '{word}' in their name?",
        "search_files",
        {"pattern": word, "directory": directory},
        {"files": hits},
        answer,
    )


def _event(rng: random.Random, difficulty: str) -> Task:
    who = names(rng, 1)[0]
    day = pick(rng, ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"))
    time = f"{rng.randint(8, 17):02d}:{pick(rng, ('00', '15', '30', '45'))}"
    title = f"Meeting with {who}"
    event_id = f"evt_{rng.randrange(16**6):06x}"
    return Task(
        f"Put a meeting with {who} in my calendar on {day} at {time}.",
        "create_event",
        {"title": title, "day": day, "time": time},
        {"status": "created", "id": event_id},
        f'Done: "{title}" is in your calendar on {day} at {time} (id {event_id}).',
    )


def _email(rng: random.Random, difficulty: str) -> Task:
    who = names(rng, 1)[0]
    topic = pick(rng, ("the quarterly report", "tomorrow's demo", "the release notes", "the budget draft"))
    to = f"{who.lower()}@example.com"
    return Task(
        f"Email {to} to say I'll send {topic} by Friday.",
        "send_email",
        {"to": to, "subject": f"About {topic}", "body": f"Hi {who}, I'll send {topic} by Friday."},
        {"status": "sent"},
        f"I've emailed {who} that you'll send {topic} by Friday.",
    )


TASKS: dict[str, Callable[[random.Random, str], Task]] = {
    "get_weather": _weather,
    "calculator": _calculator,
    "convert_currency": _currency,
    "search_files": _search,
    "create_event": _event,
    "send_email": _email,
}


def _system(rng: random.Random, difficulty: str, needed: list[str]) -> tuple[dict[str, str], list[str]]:
    """System message listing the needed tools plus distractors (more when harder)."""
    extra = {"easy": 0, "medium": 2, "hard": 4}[difficulty]
    others = [t for t in TOOL_SCHEMAS if t not in needed]
    offered = sorted(set(needed) | set(rng.sample(others, min(extra, len(others)))))
    schemas = [{"name": n, **TOOL_SCHEMAS[n]} for n in offered]
    content = f"{pick(rng, SYSTEM_PROMPTS)} You can call these tools:\n" + wrap("tools", json.dumps(schemas))
    return msg("system", content), offered


def call_text(task: Task, think: bool) -> str:
    call = wrap("tool_call", json.dumps({"name": task.name, "arguments": task.arguments}))
    if think:
        reason = f"The user needs {task.name.replace('_', ' ')}; I'll call `{task.name}` with the right arguments."
        return wrap("think", reason) + "\n" + call
    return call


def _turns(task: Task, think: bool) -> list[dict[str, str]]:
    return [
        msg("assistant", call_text(task, think)),
        msg("tool", json.dumps(task.result)),
        msg("assistant", task.answer),
    ]


def _metadata(offered: list[str], tasks: list[Task]) -> dict[str, Any]:
    return {
        "tools": offered,
        "calls": [{"name": t.name, "arguments": t.arguments} for t in tasks],
        "results": [t.result for t in tasks],
    }


def tool_call(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """One request, one tool call, its result, and the answer."""
    task = TASKS[pick(rng, tuple(TASKS))](rng, difficulty)
    system, offered = _system(rng, difficulty, [task.name])
    messages = [system, msg("user", task.request), *_turns(task, difficulty == "hard")]
    return {"messages": messages, "metadata": _metadata(offered, [task])}


def _follow_ups(rng: random.Random, difficulty: str, first: Task) -> list[tuple[str, Task]]:
    """Follow-up requests that refer back to the conversation."""
    if first.name == "get_weather":
        city = pick(rng, tuple(c for c in CITIES if c != first.arguments["city"]))
        return [(f"And in {city}?", _weather(rng, difficulty, city))]
    if first.name == "calculator":
        value = float(first.result["result"])
        nxt = _currency(rng, difficulty, amount=value, src="USD")
        return [(f"If that's in USD, what is it in {nxt.arguments['to_currency']}?", nxt)]
    if first.name == "convert_currency":
        amount, cur = first.result["amount"], first.result["currency"]
        nxt = _currency(rng, difficulty, amount=amount, src=cur)
        return [(f"And that amount in {nxt.arguments['to_currency']}?", nxt)]
    other = TASKS[pick(rng, tuple(t for t in TASKS if t != first.name))](rng, difficulty)
    return [(f"Thanks. {other.request}", other)]


def tool_call_multi_turn(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """Several user turns, each answered through a tool; later turns refer to earlier ones."""
    first = TASKS[pick(rng, tuple(TASKS))](rng, difficulty)
    steps = [(first.request, first)]
    for _ in range({"easy": 1, "medium": 2, "hard": 3}[difficulty]):
        steps += _follow_ups(rng, difficulty, steps[-1][1])
    tasks = [t for _, t in steps]
    system, offered = _system(rng, difficulty, sorted({t.name for t in tasks}))
    messages = [system]
    for request, task in steps:
        messages += [msg("user", request), *_turns(task, difficulty == "hard")]
    return {"messages": messages, "metadata": _metadata(offered, tasks)}
