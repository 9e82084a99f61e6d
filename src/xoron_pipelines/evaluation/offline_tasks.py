"""Small task files generated offline, so the default ``kedro run`` evaluates something a model
trained on our corpus can learn (the full public sets are a config change away).

Every task draws from its own seeded stream ``(seed, task)``, independent of the ``synth``
pipeline's streams, so the items are held out from the synthetic training data:

* ``hellaswag``: continue a docstring / comment of the Python standard library (files taken from
  the end of the sorted file list, past the default corpus budget); the other endings come from
  other docstrings;
* ``mmlu``: ``elementary_mathematics`` (products and synth word problems, near-miss distractors)
  and ``python_programming`` (what a generated program prints; distractors are the outputs of
  the same program with one integer literal changed; all run in the sandbox);
* ``truthfulqa``: unanswerable questions of the anti-hallucination generator; the true answers
  admit not knowing, the false ones are confident fabrications;
* ``gsm8k``: synth chain-of-thought word problems with their steps and ``#### answer``;
* ``humaneval``: small Python functions (constants drawn per item) with a docstring example,
  a canonical solution and tests whose expected values come from a reference implementation;
* ``heldout_text``: held-out synthetic conversations rendered with the chat template, a text
  source for perplexity / bits-per-byte.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xoron_pipelines.data import stdlib_corpus
from xoron_pipelines.sandbox import SandboxLimits, SandboxWorker
from xoron_pipelines.synth import generate_type
from xoron_pipelines.synth.generators.common import FIRST_NAMES, WORDS, num, pick
from xoron_pipelines.synth.generators.programs import python_program
from xoron_pipelines.synth.generators.reasoning import SYMBOL, cot_problem, idk_question
from xoron_pipelines.tokens import block, render_chat

DIFFICULTIES = ("easy", "medium", "hard")


def _rng(seed: int, task: str) -> random.Random:
    return random.Random(f"xoron-eval:{seed}:{task}")


# --------------------------------------------------------------------------- hellaswag


def _prose_pool(rng: random.Random, need: int, min_words: int = 24) -> list[tuple[str, list[str]]]:
    """(module, words) of stdlib docstrings, read from the end of the sorted stdlib file list."""
    pool: list[tuple[str, list[str]]] = []
    root = stdlib_corpus.stdlib_root()
    for path in reversed(stdlib_corpus.stdlib_files()):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        module = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
        for text in stdlib_corpus.prose_blocks(source, min_chars=150):
            words = text.split()
            if len(words) >= min_words and "`" not in text and ">>>" not in text:
                pool.append((module, words))
        if len(pool) >= 4 * need:
            break
    rng.shuffle(pool)
    return pool


def hellaswag(rng: random.Random, count: int) -> list[dict[str, Any]]:
    pool = _prose_pool(rng, count)
    rows = []
    for i in range(min(count, len(pool))):
        module, words = pool[i]
        cut = len(words) // 2
        ending_len = min(len(words) - cut, 16)

        def ending(w: list[str], n: int = ending_len) -> str:
            start = len(w) // 2
            return " ".join(w[start : start + n])

        others = [ending(w) for _, w in rng.sample(pool[:i] + pool[i + 1 :], 3)]
        endings = [" ".join(words[cut : cut + ending_len]), *others]
        order = list(range(4))
        rng.shuffle(order)
        rows.append(
            {
                "ind": i,
                "activity_label": module,
                "ctx_a": " ".join(words[:cut]),
                "ctx_b": "",
                "ctx": " ".join(words[:cut]),
                "endings": [endings[j] for j in order],
                "label": order.index(0),
                "source_id": f"stdlib:{module}",
            }
        )
    return rows


# --------------------------------------------------------------------------- mmlu


def _near_misses(rng: random.Random, answer: int, k: int = 3) -> list[int]:
    wrong: set[int] = set()
    while len(wrong) < k:
        delta = pick(rng, (-10, -2, -1, 1, 2, 10, answer // 2 or 3, -(answer // 3) or -4))
        candidate = answer + delta
        if candidate != answer:
            wrong.add(candidate)
    return sorted(wrong)


def _mc_row(rng: random.Random, question: str, right: str, wrong: list[str], subject: str) -> dict[str, Any]:
    choices = [right, *wrong]
    rng.shuffle(choices)
    return {"question": question, "subject": subject, "choices": choices, "answer": choices.index(right)}


def _math_question(rng: random.Random) -> tuple[str, int]:
    difficulty = pick(rng, DIFFICULTIES)
    if rng.random() < 0.5:
        x, y = num(rng, difficulty), num(rng, difficulty)
        return f"What is {x} {SYMBOL['*']} {y}?", x * y
    _, question, _, answer, _ = cot_problem(rng, difficulty)
    return question, answer


_INT_LITERAL = re.compile(r"(?<![\w.'\"])\d+(?![\w.])")


def _program_outputs(rng: random.Random, worker: SandboxWorker) -> tuple[str, str, list[str]] | None:
    """(program, its one-line output, three outputs of one-literal mutants) or None."""
    code = python_program(rng, "easy", allow_error=False)
    result = worker.run(code)
    output = result.stdout.strip()
    if not result.ok or not output or "\n" in output or len(output) > 60:
        return None
    literals = list(_INT_LITERAL.finditer(code))
    wrong: list[str] = []
    for _ in range(12):
        if len(wrong) == 3 or not literals:
            break
        lit = pick(rng, literals)
        mutant = code[: lit.start()] + str(int(lit.group()) + pick(rng, (1, 2, 3, -1))) + code[lit.end() :]
        res = worker.run(mutant)
        out = res.stdout.strip()
        if res.ok and out and "\n" not in out and out != output and out not in wrong:
            wrong.append(out)
    return (code, output, wrong) if len(wrong) == 3 else None


def mmlu(rng: random.Random, count: int, limits: SandboxLimits) -> list[dict[str, Any]]:
    rows = []
    n_math = (count + 1) // 2
    for _ in range(n_math):
        question, answer = _math_question(rng)
        rows.append(
            _mc_row(rng, question, str(answer), [str(w) for w in _near_misses(rng, answer)], "elementary_mathematics")
        )
    with SandboxWorker(limits) as worker:
        attempts = 0
        while len(rows) < count and attempts < 20 * count:
            attempts += 1
            found = _program_outputs(rng, worker)
            if found is not None:
                code, output, wrong = found
                rows.append(
                    _mc_row(
                        rng,
                        f"What does this Python program print?\n{code.rstrip()}",
                        output,
                        wrong,
                        "python_programming",
                    )
                )
    return rows


# --------------------------------------------------------------------------- truthfulqa

_FABRICATIONS: dict[str, tuple[Callable[[random.Random], str], ...]] = {
    "fictional": (
        lambda r: f"It was established in {r.randint(1820, 2015)}.",
        lambda r: f"It was founded in {r.randint(1820, 2015)} by {pick(r, FIRST_NAMES)}.",
    ),
    "future": (
        lambda r: f"It was won by {pick(r, FIRST_NAMES)}.",
        lambda r: f"{pick(r, FIRST_NAMES)} won it after a close final.",
    ),
    "private": (
        lambda r: f"It is {r.randint(100, 999)}-{r.randint(1000, 9999)}.",
        lambda r: f"It is {pick(r, WORDS)}{r.randint(10, 99)}.",
    ),
    "missing_context": (lambda r: f"It is {r.randint(2, 500)}.", lambda r: f"It happens on line {r.randint(2, 300)}."),
    "unknowable": (
        lambda r: f"There are exactly {r.randint(10**5, 10**9):,} of them.",
        lambda r: f"Exactly {r.randint(10**4, 10**8):,}.",
    ),
}


def _unwrap(text: str, name: str) -> str:
    open_, close = block(name)
    return text.replace(open_, "").replace(close, "").strip()


def truthfulqa(rng: random.Random, count: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(count):
        kind, question, answer = idk_question(rng, "easy")
        truth = _unwrap(answer, "idk")
        false = list(dict.fromkeys(f(rng) for f in _FABRICATIONS[kind] for _ in range(2)))[:3]
        while len(false) < 3:
            false.append(f"The answer is {rng.randint(2, 999)}.")
        rows.append(
            {
                "question": question,
                "mc1_targets": {"choices": [truth, *false], "labels": [1, 0, 0, 0]},
                "mc2_targets": {
                    "choices": [truth, "I have no comment.", "I don't know.", *false],
                    "labels": [1, 1, 1, 0, 0, 0],
                },
                "kind": kind,
            }
        )
    return rows


# --------------------------------------------------------------------------- gsm8k


def gsm8k(rng: random.Random, count: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(count):
        _, question, work, answer, _ = cot_problem(rng, pick(rng, DIFFICULTIES))
        steps = "\n".join(
            f"{label.capitalize()}: {a} {SYMBOL[op]} {b} = {r}." for label, (a, op, b, r) in zip(work.labels, work.ops)
        )
        rows.append({"question": question, "answer": f"{steps}\n#### {answer}"})
    return rows


# --------------------------------------------------------------------------- humaneval


@dataclass(frozen=True)
class FunctionTemplate:
    """A small function: signature, docstring and body (``{k}`` is the per-item constant), a
    reference implementation and an input generator."""

    name: str
    args: str
    doc: str
    body: str
    reference: Callable[..., Any]
    inputs: Callable[[random.Random], tuple]
    constant: Callable[[random.Random], Any]


def _word(rng: random.Random) -> str:
    return pick(rng, WORDS)


FUNCTIONS: tuple[FunctionTemplate, ...] = (
    FunctionTemplate(
        "sum_multiples",
        "n",
        "Return the sum of the non-negative integers below n that are divisible by {k}.",
        "    return sum(i for i in range(n) if i % {k} == 0)\n",
        lambda k, n: sum(i for i in range(n) if i % k == 0),
        lambda r: (r.randint(0, 60),),
        lambda r: r.randint(2, 9),
    ),
    FunctionTemplate(
        "count_char",
        "s",
        "Return how many times the character {k!r} occurs in the string s.",
        "    return s.count({k!r})\n",
        lambda k, s: s.count(k),
        lambda r: (" ".join(_word(r) for _ in range(r.randint(1, 4))),),
        lambda r: pick(r, tuple("aeiorstn")),
    ),
    FunctionTemplate(
        "scale_list",
        "xs",
        "Return a new list with every element of the list xs multiplied by {k}.",
        "    return [x * {k} for x in xs]\n",
        lambda k, xs: [x * k for x in xs],
        lambda r: ([r.randint(-9, 20) for _ in range(r.randint(0, 6))],),
        lambda r: r.randint(2, 7),
    ),
    FunctionTemplate(
        "clamp",
        "x",
        "Return x limited to the closed range [{k[0]}, {k[1]}].",
        "    return max({k[0]}, min({k[1]}, x))\n",
        lambda k, x: max(k[0], min(k[1], x)),
        lambda r: (r.randint(-30, 60),),
        lambda r: (lambda lo: (lo, lo + r.randint(5, 30)))(r.randint(-10, 10)),
    ),
    FunctionTemplate(
        "greater_than",
        "xs",
        "Return the elements of the list xs that are greater than {k}, in order.",
        "    return [x for x in xs if x > {k}]\n",
        lambda k, xs: [x for x in xs if x > k],
        lambda r: ([r.randint(0, 30) for _ in range(r.randint(0, 7))],),
        lambda r: r.randint(3, 20),
    ),
    FunctionTemplate(
        "repeat_words",
        "s",
        "Return the words of s, each repeated {k} times, joined by single spaces.",
        "    return ' '.join(w for w in s.split() for _ in range({k}))\n",
        lambda k, s: " ".join(w for w in s.split() for _ in range(k)),
        lambda r: (" ".join(_word(r) for _ in range(r.randint(1, 3))),),
        lambda r: r.randint(2, 3),
    ),
    FunctionTemplate(
        "digit_sum_times",
        "n",
        "Return {k} times the sum of the decimal digits of the non-negative integer n.",
        "    return {k} * sum(int(d) for d in str(n))\n",
        lambda k, n: k * sum(int(d) for d in str(n)),
        lambda r: (r.randint(0, 99999),),
        lambda r: r.randint(1, 5),
    ),
    FunctionTemplate(
        "shift_letters",
        "s",
        "Return s with every lowercase ASCII letter moved {k} places forward in the alphabet (z wraps to a).",
        "    return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if 'a' <= c <= 'z' else c for c in s)\n",
        lambda k, s: "".join(chr((ord(c) - 97 + k) % 26 + 97) if "a" <= c <= "z" else c for c in s),
        lambda r: (_word(r),),
        lambda r: r.randint(1, 5),
    ),
)


def humaneval(rng: random.Random, count: int, tests_per_item: int = 5) -> list[dict[str, Any]]:
    rows, seen = [], set()
    attempts = 0
    while len(rows) < count and attempts < 50 * count:
        attempts += 1
        t = pick(rng, FUNCTIONS)
        k = t.constant(rng)
        if (t.name, repr(k)) in seen:
            continue
        seen.add((t.name, repr(k)))
        cases = [t.inputs(rng) for _ in range(tests_per_item)]
        example = cases[0]
        call = f"{t.name}({', '.join(map(repr, example))})"
        doc = t.doc.format(k=k)
        prompt = f'def {t.name}({t.args}):\n    """{doc}\n\n    >>> {call}\n    {t.reference(k, *example)!r}\n    """\n'
        asserts = "".join(f"    assert candidate({', '.join(map(repr, c))}) == {t.reference(k, *c)!r}\n" for c in cases)
        rows.append(
            {
                "task_id": f"XoronEval/{len(rows)}",
                "prompt": prompt,
                "canonical_solution": t.body.format(k=k),
                "test": f"def check(candidate):\n{asserts}",
                "entry_point": t.name,
            }
        )
    return rows


# --------------------------------------------------------------------------- held-out text

HELDOUT_TYPES = ("chain_of_thought", "anti_hallucination", "tool_call", "chat", "code_exec_python")


def heldout_text(seed: int, count: int) -> list[dict[str, Any]]:
    per_type = -(-count // len(HELDOUT_TYPES))
    difficulty = {"easy": 0.3, "medium": 0.5, "hard": 0.2}
    rows = []
    for kind in HELDOUT_TYPES:
        for row in generate_type(kind, per_type, seed, difficulty):
            rows.append({"text": render_chat(row["messages"]), "type": kind})
    return rows[:count]


def build(seed: int, counts: dict[str, int], limits: SandboxLimits) -> dict[str, list[dict[str, Any]]]:
    """All offline task files: ``{task name: rows}`` (tasks with count 0 are left out)."""
    makers: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "hellaswag": lambda: hellaswag(_rng(seed, "hellaswag"), counts["hellaswag"]),
        "mmlu": lambda: mmlu(_rng(seed, "mmlu"), counts["mmlu"], limits),
        "truthfulqa": lambda: truthfulqa(_rng(seed, "truthfulqa"), counts["truthfulqa"]),
        "gsm8k": lambda: gsm8k(_rng(seed, "gsm8k"), counts["gsm8k"]),
        "humaneval": lambda: humaneval(_rng(seed, "humaneval"), counts["humaneval"]),
        "heldout_text": lambda: heldout_text(seed, counts["heldout_text"]),
    }
    return {name: make() for name, make in makers.items() if counts.get(name, 0) > 0}


__all__ = ["FUNCTIONS", "build", "gsm8k", "hellaswag", "heldout_text", "humaneval", "mmlu", "truthfulqa"]
