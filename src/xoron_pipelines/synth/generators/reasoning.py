"""Chain-of-thought arithmetic word problems and anti-hallucination (IDK / uncertainty) answers.

CoT answers put their working in a ``<|think|>`` block, one ``<|step|>`` per operation; the
operations are stored in ``metadata["operations"]`` as ``[a, op, b, result]`` so the arithmetic
can be re-checked, and the visible answer states ``metadata["answer"]``.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable
from typing import Any

from xoron_pipelines.tokens import SPECIAL_TOKENS

from .common import CITIES, DAYS, ITEMS, WORDS, chat, names, num, pick, wrap

OPS: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "%": operator.mod,
}
SYMBOL = {"+": "+", "-": "-", "*": "×", "//": "÷", "%": "mod"}
STEP = SPECIAL_TOKENS["step"]


class Work:
    """Records the operations of a solution as they are computed."""

    def __init__(self) -> None:
        self.ops: list[list[Any]] = []
        self.labels: list[str] = []

    def do(self, a: int, op: str, b: int, label: str) -> int:
        result = OPS[op](a, b)
        self.ops.append([a, op, b, result])
        self.labels.append(label)
        return result

    def steps(self) -> str:
        return "\n".join(
            f"{STEP} {label}: {a} {SYMBOL[op]} {b} = {r}" for label, (a, op, b, r) in zip(self.labels, self.ops)
        )


def _shopping(rng: random.Random, difficulty: str, w: Work) -> tuple[str, int, str]:
    who = names(rng, 1)[0]
    (s1, p1_name), (s2, p2_name) = rng.sample(ITEMS, 2)
    n1, price1 = num(rng, "easy"), num(rng, difficulty)
    cost1 = w.do(n1, "*", price1, f"cost of the {p1_name}")
    question = f"{who} buys {n1} {p1_name} at ${price1} each"
    total = cost1
    if difficulty != "easy":
        n2, price2 = num(rng, "easy"), num(rng, difficulty)
        cost2 = w.do(n2, "*", price2, f"cost of the {p2_name}")
        total = w.do(cost1, "+", cost2, "total cost")
        question += f" and {n2} {p2_name} at ${price2} each"
    if difficulty == "hard":
        bill = (total // 100 + 1) * 100
        change = w.do(bill, "-", total, "change")
        return (
            f"{question}, paying with ${bill}. How much change does {who} get?",
            change,
            f"{who} gets ${change} in change.",
        )
    return f"{question}. How much does {who} spend in total?", total, f"{who} spends ${total} in total."


def _travel(rng: random.Random, difficulty: str, w: Work) -> tuple[str, int, str]:
    who = names(rng, 1)[0]
    a, b = rng.sample(CITIES, 2)
    v1, t1 = num(rng, difficulty, 5) + 20, rng.randint(1, 4)
    d1 = w.do(v1, "*", t1, "first leg")
    question = f"{who} drives from {a} towards {b} at {v1} km/h for {t1} hours"
    dist = d1
    if difficulty != "easy":
        v2, t2 = num(rng, difficulty, 5) + 20, rng.randint(1, 3)
        d2 = w.do(v2, "*", t2, "second leg")
        dist = w.do(d1, "+", d2, "total distance")
        question += f", then at {v2} km/h for another {t2} hours"
    if difficulty == "hard":
        total = dist + num(rng, difficulty, 10)
        left = w.do(total, "-", dist, "distance remaining")
        return (
            f"{question}. The whole trip is {total} km. How many kilometres are left?",
            left,
            f"{who} still has {left} km to go.",
        )
    return f"{question}. How far has {who} travelled?", dist, f"{who} has travelled {dist} km."


def _savings(rng: random.Random, difficulty: str, w: Work) -> tuple[str, int, str]:
    who = names(rng, 1)[0]
    weekly, weeks = num(rng, difficulty), rng.randint(3, 12)
    saved = w.do(weekly, "*", weeks, "amount saved")
    question = f"{who} saves ${weekly} every week for {weeks} weeks"
    if difficulty == "easy":
        return f"{question}. How much has {who} saved?", saved, f"{who} has saved ${saved}."
    friends = rng.randint(2, 5)
    share = rng.randint(1, max(1, saved // friends - 1))
    spent = saved - share * friends
    left = w.do(saved, "-", spent, "money left")
    if difficulty == "medium":
        return f"{question} and then spends ${spent}. How much is left?", left, f"{who} has ${left} left."
    each = w.do(left, "//", friends, "share per friend")
    return (
        f"{question}, spends ${spent}, and splits the rest equally among {friends} friends. "
        "How much does each friend get?",
        each,
        f"Each friend gets ${each}.",
    )


def _packing(rng: random.Random, difficulty: str, w: Work) -> tuple[str, int, str]:
    singular, plural = pick(rng, ITEMS)
    per_box = rng.randint(3, 12)
    total = num(rng, difficulty, 3) + rng.randint(0, per_box - 1)
    boxes = w.do(total, "//", per_box, "full boxes")
    if difficulty == "easy":
        return (
            f"A shop packs {total} {plural} into boxes of {per_box}. How many boxes can be completely filled?",
            boxes,
            f"{boxes} boxes can be filled.",
        )
    packed = w.do(boxes, "*", per_box, f"{plural} in full boxes")
    left = w.do(total, "-", packed, f"{plural} left over")
    if difficulty == "medium":
        return (
            f"A shop packs {total} {plural} into boxes of {per_box}. How many {plural} are left over?",
            left,
            f"{left} {singular} is left over." if left == 1 else f"{left} {plural} are left over.",
        )
    extra = 1 if left else 0
    needed = w.do(boxes, "+", extra, "boxes needed including a partial one")
    return (
        f"A shop must ship all {total} {plural} in boxes that hold {per_box} each. How many boxes are needed?",
        needed,
        f"{needed} boxes are needed.",
    )


def _expression(rng: random.Random, difficulty: str, w: Work) -> tuple[str, int, str]:
    n_ops = {"easy": 2, "medium": 3, "hard": rng.randint(4, 5)}[difficulty]
    value = num(rng, difficulty)
    text = str(value)
    for i in range(n_ops):
        op = pick(rng, ("+", "-", "*") if difficulty != "hard" else ("+", "-", "*", "%"))
        operand = num(rng, "easy") if op in ("*", "%") else num(rng, difficulty)
        new = w.do(value, op, operand, f"step {i + 1}")
        text = f"({text} {SYMBOL[op]} {operand})" if i < n_ops - 1 else f"{text} {SYMBOL[op]} {operand}"
        value = new
    return f"Compute {text}.", value, f"The result is {value}."


def _rectangle(rng: random.Random, difficulty: str, w: Work) -> tuple[str, int, str]:
    width, height = num(rng, difficulty) + 2, num(rng, difficulty) + 2
    area = w.do(width, "*", height, "area of the room")
    if difficulty == "easy":
        return f"A room is {width} m by {height} m. What is its floor area in m²?", area, f"The area is {area} m²."
    side = rng.randint(1, min(width, height) - 1)
    cut = w.do(side, "*", side, "area of the square cut-out")
    rest = w.do(area, "-", cut, "remaining floor area")
    question = f"A room is {width} m by {height} m, with a {side} m × {side} m square pillar area that is not tiled"
    if difficulty == "medium":
        return f"{question}. How many m² are tiled?", rest, f"{rest} m² are tiled."
    price = rng.randint(5, 40)
    cost = w.do(rest, "*", price, "tiling cost")
    return f"{question}. Tiles cost ${price} per m². What does the tiling cost?", cost, f"The tiling costs ${cost}."


COT_TEMPLATES = {
    "shopping": _shopping,
    "travel": _travel,
    "savings": _savings,
    "packing": _packing,
    "expression": _expression,
    "rectangle": _rectangle,
}

LEAD_INS = ("", "Solve step by step: ", "Please help me with this: ", "Quick question. ", "Word problem: ")


def cot_problem(rng: random.Random, difficulty: str) -> tuple[str, str, Work, int, str]:
    """(template, question, work, answer, answer sentence) of a random word problem."""
    template = pick(rng, tuple(COT_TEMPLATES))
    work = Work()
    question, answer, sentence = COT_TEMPLATES[template](rng, difficulty, work)
    return template, question, work, answer, sentence


def cot_answer(work: Work, sentence: str, difficulty: str) -> str:
    """The assistant's answer: a think block with one step per operation (plus a check of the
    last step when hard), then the visible sentence."""
    thinking = work.steps()
    a, op, b, r = work.ops[-1]
    inverse = {"+": "-", "-": "+", "*": "//"}.get(op)
    if difficulty == "hard" and inverse and b != 0:
        check = OPS[inverse](r, b)
        thinking += "\n" + wrap("verify", f"{r} {SYMBOL[inverse]} {b} = {check}, which matches {a}.")
    return f"{wrap('think', thinking)}\n{sentence}"


def chain_of_thought(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """An arithmetic word problem answered with a think block of checked steps."""
    template, question, work, answer, sentence = cot_problem(rng, difficulty)
    return {
        "messages": chat(
            rng, ("user", pick(rng, LEAD_INS) + question), ("assistant", cot_answer(work, sentence, difficulty))
        ),
        "metadata": {"template": template, "operations": work.ops, "answer": answer},
    }


# --------------------------------------------------------------------------- anti-hallucination

_SYLLABLES = ("vel", "mor", "tan", "quis", "dra", "lun", "bex", "sor", "kal", "zin", "orn", "thal", "pru", "gav")
_EVENTS = ("World Cup", "Nobel Prize in Physics", "Tour de France", "Eurovision Song Contest", "Chess Olympiad")
_SERVICES = ("email", "bank", "streaming", "cloud storage", "work VPN")


def _fake_name(rng: random.Random) -> str:
    return "".join(rng.sample(_SYLLABLES, rng.randint(2, 3))).capitalize()


def idk_question(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    kind = pick(rng, ("fictional", "future", "private", "missing_context", "unknowable"))
    if kind == "fictional":
        thing = f"the {_fake_name(rng)} {pick(rng, ('Institute', 'Bridge', 'Prize', 'Treaty', 'Observatory'))}"
        q = f"In what year was {thing} in {pick(rng, CITIES)} established?"
        a = (
            f"I don't know. I have no reliable information about {thing}, and I won't guess a year. "
            "If you have a source about it, share it and I can help you read it."
        )
    elif kind == "future":
        year = rng.randint(2031, 2060)
        event = pick(rng, _EVENTS)
        q = f"Who won the {year} {event}?"
        a = (
            f"I don't know. I have no information about the {year} {event}; it may not have taken place yet, "
            "so any name I gave would be made up."
        )
    elif kind == "private":
        who = names(rng, 1)[0]
        q = pick(
            rng,
            (
                f"What is {who}'s home phone number?",
                f"What's the password of my {pick(rng, _SERVICES)} account?",
                "What did I have for breakfast this morning?",
            ),
        )
        a = "I don't know, and I have no way to know it: that is private information I have never been given."
    elif kind == "missing_context":
        var = pick(rng, ("total", "result", "config", "user_id", "offset"))
        file = f"{pick(rng, WORDS)}.{pick(rng, ('py', 'js', 'go', 'rs'))}"
        q = pick(
            rng,
            (
                f"What value does `{var}` have at the end of {file}?",
                f"Why did the last build of the {pick(rng, WORDS)} service fail?",
                f"Which line of {file} sets `{var}`?",
            ),
        )
        a = (
            "I don't know: I can't see your code, files or logs. "
            "Paste the relevant part and I will go through it with you."
        )
    else:
        singular, plural = pick(rng, ITEMS)
        q = f"Exactly how many {plural} exist in the world right now?"
        a = (
            f"I don't know, and nobody can know that exactly: no one counts every {singular} in real time. "
            "I could help you reason about a rough estimate instead."
        )
    if difficulty == "hard":
        a += f" {SPECIAL_TOKENS['needs_verification']} Please check an authoritative source."
    return kind, q, wrap("idk", a)


def _uncertain(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        km = num(rng, difficulty)
        hours = km / 5
        q = f"Roughly how long does it take to walk {km} km?"
        a = (
            f"At a typical walking pace of about 5 km/h, roughly {hours:.1f} hours, "
            "but terrain, breaks and fitness can change that a lot."
        )
        return "estimate", q, wrap("uncertain", a)
    city, day = pick(rng, CITIES), pick(rng, DAYS)
    q = f"Will it rain in {city} next {day}?"
    a = (
        f"I can't say for sure. I have no live weather data for {city}. "
        f"{SPECIAL_TOKENS['needs_verification']} Check a current forecast closer to {day}."
    )
    return "forecast", q, wrap("uncertain", a)


_FACTS = (
    ("How many days are there in a leap year?", "There are 366 days in a leap year."),
    ("How many sides does a hexagon have?", "A hexagon has 6 sides."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("At what temperature does water boil at sea level, in degrees Celsius?", "Water boils at 100 °C at sea level."),
    ("How many minutes are there in a day?", "There are 1440 minutes in a day."),
    ("How many bits are in a byte?", "A byte has 8 bits."),
    ("What is the largest planet in the Solar System?", "Jupiter is the largest planet in the Solar System."),
)


def _confident(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        q, a = pick(rng, _FACTS)
        return "fact", q, f"{SPECIAL_TOKENS['confident']} {a}"
    x, y = num(rng, difficulty), num(rng, difficulty)
    return "arithmetic", f"What is {x} × {y}?", f"{SPECIAL_TOKENS['confident']} {x} × {y} = {x * y}."


def anti_hallucination(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """Unanswerable questions answered with an IDK block; estimates hedged; known facts stated."""
    roll = rng.random()
    if roll < 0.6:
        kind, (subkind, q, a), answerable = "idk", idk_question(rng, difficulty), False
    elif roll < 0.85:
        kind, (subkind, q, a), answerable = "uncertain", _uncertain(rng, difficulty), True
    else:
        kind, (subkind, q, a), answerable = "confident", _confident(rng, difficulty), True
    return {
        "messages": chat(rng, ("user", q), ("assistant", a)),
        "metadata": {"kind": kind, "subkind": subkind, "answerable": answerable},
    }
