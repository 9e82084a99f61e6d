"""Plain chat (small verifiable tasks, explanations, small talk) and dialogue/summary pairs."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .common import CITIES, DAYS, ITEMS, WORDS, chat, names, num, pick

GLOSSARY = {
    "a variable": "A variable is a name that refers to a value, so a program can read or change it later.",
    "recursion": "Recursion is when a function solves a problem by calling itself on a smaller version of it, "
    "until it reaches a base case it can answer directly.",
    "a hash table": "A hash table stores key-value pairs and uses a hash of the key to find a value in about "
    "constant time on average.",
    "an API": "An API (application programming interface) is a defined set of operations one program offers "
    "to others, with the inputs and outputs each one expects.",
    "a unit test": "A unit test runs one small piece of code, such as a function, with known inputs and checks "
    "that it returns the expected result.",
    "version control": "Version control records every change to a set of files, so you can see who changed "
    "what, go back to earlier versions and merge work from several people.",
    "a race condition": "A race condition is a bug where the result depends on the timing of concurrent "
    "operations, for example two threads updating the same value.",
    "Big-O notation": "Big-O notation describes how an algorithm's running time or memory grows with the size "
    "of its input, ignoring constant factors.",
    "a virtual environment": "A virtual environment is an isolated directory with its own interpreter and "
    "packages, so each project can pin its own dependency versions.",
}


def _sentence(rng: random.Random, difficulty: str) -> str:
    n = {"easy": 4, "medium": 7, "hard": 11}[difficulty]
    return " ".join(rng.sample(WORDS, n))


def _count_words(rng: random.Random, difficulty: str) -> tuple[str, str]:
    s = _sentence(rng, difficulty)
    return f'How many words are in this sentence: "{s}"?', f"It has {len(s.split())} words."


def _sort_words(rng: random.Random, difficulty: str) -> tuple[str, str]:
    words = _sentence(rng, difficulty).split()
    return f"Sort these words alphabetically: {', '.join(words)}", ", ".join(sorted(words))


def _convert(rng: random.Random, difficulty: str) -> tuple[str, str]:
    x = num(rng, difficulty)
    unit, q, a = pick(
        rng,
        (
            ("km", f"Convert {x} km to miles.", f"{x} km is about {x * 0.621371:.2f} miles."),
            ("C", f"What is {x} °C in Fahrenheit?", f"{x} °C is {x * 9 / 5 + 32:g} °F."),
            ("h", f"How many minutes are in {x} hours?", f"{x} hours is {x * 60} minutes."),
            ("kg", f"How many pounds is {x} kg?", f"{x} kg is about {x * 2.20462:.1f} lb."),
        ),
    )
    return q, a


def _weekday(rng: random.Random, difficulty: str) -> tuple[str, str]:
    start, ahead = rng.randrange(7), num(rng, difficulty)
    return (
        f"If today is {DAYS[start]}, what day of the week will it be in {ahead} days?",
        f"It will be {DAYS[(start + ahead) % 7]}.",
    )


def _explain(rng: random.Random, difficulty: str) -> tuple[str, str]:
    term = pick(rng, tuple(GLOSSARY))
    q = pick(rng, (f"What is {term}?", f"Can you explain {term} in simple terms?", f"ELI5: {term}"))
    return q, GLOSSARY[term]


def _small_talk(rng: random.Random, difficulty: str) -> tuple[str, str]:
    who, city = names(rng, 1)[0], pick(rng, CITIES)
    return (f"Hi! I'm {who}, writing from {city}.", f"Hi {who}, nice to meet you! How can I help you today?")


CHAT_TASKS: dict[str, Callable[[random.Random, str], tuple[str, str]]] = {
    "count_words": _count_words,
    "sort_words": _sort_words,
    "convert": _convert,
    "weekday": _weekday,
    "explain": _explain,
    "small_talk": _small_talk,
}


def chat_plain(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """One to three user/assistant exchanges of small tasks with exact answers."""
    turns, tasks = [], []
    for _ in range({"easy": 1, "medium": 2, "hard": 3}[difficulty]):
        task = pick(rng, tuple(CHAT_TASKS))
        q, a = CHAT_TASKS[task](rng, difficulty)
        turns += [("user", q), ("assistant", a)]
        tasks.append(task)
    return {"messages": chat(rng, *turns), "metadata": {"tasks": tasks}}


# --------------------------------------------------------------------------- dialogue -> summary

FILLER = (
    "Hope your week is going well.",
    "Sorry, I was on a call.",
    "Ha, sounds good.",
    "Give me a second.",
    "By the way, did you see the game?",
    "Not really, I was busy.",
    "Great, thanks!",
)


def _meeting(rng: random.Random, a: str, b: str, hard: bool) -> tuple[list[tuple[str, str]], str, dict]:
    place = pick(rng, ("the library", "the cafe on Main Street", "the office", "the park entrance"))
    topic = pick(rng, ("the chemistry exam", "the project plan", "the budget", "the trip"))
    day, hour = pick(rng, DAYS), rng.randint(9, 17)
    lines = [(a, f"Can we meet to go over {topic}?"), (b, f"Sure. How about {day} at {hour}:00 at {place}?")]
    if hard:
        new_hour = hour + rng.randint(1, 2)
        lines += [(a, f"{hour}:00 is tricky for me. Could we do {new_hour}:00?"), (b, f"{new_hour}:00 works.")]
        hour = new_hour
    lines.append((a, f"Perfect, see you {day} at {hour}:00."))
    summary = f"{a} and {b} agree to meet at {place} on {day} at {hour}:00 to go over {topic}."
    return lines, summary, {"place": place, "day": day, "hour": hour, "topic": topic}


def _purchase(rng: random.Random, a: str, b: str, hard: bool) -> tuple[list[tuple[str, str]], str, dict]:
    singular, plural = pick(rng, ITEMS)
    qty, price = rng.randint(2, 9), rng.randint(3, 40)
    lines = [
        (a, f"Hello, do you have {plural} in stock?"),
        (b, f"Yes, they are ${price} each."),
        (a, f"I'll take {qty}."),
    ]
    if hard:
        qty += rng.randint(1, 3)
        lines += [(a, f"Actually, make that {qty}."), (b, "No problem.")]
    lines.append((b, f"That's {qty} {plural}, ${qty * price} in total."))
    summary = f"{a} buys {qty} {plural} from {b} at ${price} each, ${qty * price} in total."
    return lines, summary, {"item": singular, "quantity": qty, "price": price, "total": qty * price}


def _bug(rng: random.Random, a: str, b: str, hard: bool) -> tuple[list[tuple[str, str]], str, dict]:
    app = pick(rng, ("the mobile app", "the dashboard", "the CLI", "the sync service"))
    symptom = pick(rng, ("crashes on startup", "shows a blank page", "logs users out", "uploads files twice"))
    version = f"{rng.randint(1, 5)}.{rng.randint(0, 20)}"
    lines = [
        (a, f"Since updating to {version}, {app} {symptom}."),
        (b, "Thanks for reporting. Which device?"),
        (a, pick(rng, ("My laptop.", "An older phone.", "Every machine I tried."))),
        (b, f"I can reproduce it. I'll ship a fix in {version}.1."),
    ]
    if hard:
        lines += [(a, "Is there a workaround meanwhile?"), (b, f"Yes, downgrade to the version before {version}.")]
    summary = (
        f"{a} reports that {app} {symptom} since version {version}; {b} reproduces it and plans a fix in {version}.1"
    )
    summary += ", suggesting a downgrade until then." if hard else "."
    return lines, summary, {"app": app, "symptom": symptom, "version": version}


def _trip(rng: random.Random, a: str, b: str, hard: bool) -> tuple[list[tuple[str, str]], str, dict]:
    city = pick(rng, CITIES)
    transport = pick(rng, ("train", "bus", "car", "plane"))
    nights = rng.randint(2, 6)
    booker = pick(rng, (a, b))
    lines = [
        (a, f"Want to go to {city} next month?"),
        (b, f"Yes! {nights} nights?"),
        (a, f"Sounds right. Shall we take the {transport}?"),
        (b, "Fine by me."),
    ]
    if hard:
        nights += 1
        lines += [(b, f"Could we stay {nights} nights instead?"), (a, "Sure, one more night.")]
    other = b if booker == a else a
    lines.append((booker, f"I'll book everything tonight, {other}."))
    summary = f"{a} and {b} plan a {nights}-night trip to {city} by {transport}; {booker} will do the booking."
    return lines, summary, {"city": city, "transport": transport, "nights": nights, "booker": booker}


SCENARIOS = {"meeting": _meeting, "purchase": _purchase, "bug_report": _bug, "trip": _trip}


def dialogue_summary(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """A two-person dialogue (``source``) and its one-sentence summary (``target``). Hard
    dialogues change a detail midway; the summary states the final value."""
    a, b = names(rng, 2)
    scenario = pick(rng, tuple(SCENARIOS))
    lines, summary, facts = SCENARIOS[scenario](rng, a, b, difficulty == "hard")
    if difficulty != "easy":
        for _ in range(2 if difficulty == "hard" else 1):
            pos = rng.randint(1, len(lines) - 1)
            lines.insert(pos, (pick(rng, (a, b)), pick(rng, FILLER)))
    source = "\n".join(f"{who}: {text}" for who, text in lines)
    return {
        "source": source,
        "target": summary,
        "metadata": {"scenario": scenario, "participants": [a, b], "facts": facts, "turns": len(lines)},
    }


__all__ = ["chat_plain", "dialogue_summary"]
