"""Code execution (Python, Jupyter, shell) and fill-in-the-middle examples.

Every stated output is exact: Python is executed in-process at generation time
(:mod:`.programs`), and shell sessions are simulated on an in-memory directory by
:class:`Shell`, which implements the few coreutils commands it emits.
"""

from __future__ import annotations

import random
from typing import Any

from xoron_pipelines.tokens import SPECIAL_TOKENS

from .common import WORDS, chat, names, num, pick, wrap
from .programs import EXTENSIONS, python_program, run_cells, run_python, source_file

PY_ASKS = (
    "What does this Python code print?",
    "Run this script and show me the output.",
    "Execute the following and tell me what happens:",
    "Can you run this for me?",
)


def _result_block(stdout: str, error: str | None) -> str:
    parts = []
    if stdout:
        parts.append(wrap("exec_result", stdout.rstrip("\n")))
    if error:
        parts.append(wrap("exec_error", error))
    return "\n".join(parts) if parts else wrap("exec_result", "")


def code_exec_python(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """A generated Python program, executed: its exact stdout (and error line, if it raises)."""
    code = python_program(rng, difficulty)
    stdout, error = run_python(code)
    summary = (
        f"The program stops with `{error}`."
        if error
        else f"The program prints {len(stdout.splitlines())} line(s), shown above."
    )
    answer = f"{wrap('exec', code.rstrip())}\n{_result_block(stdout, error)}\n{summary}"
    return {
        "messages": chat(rng, ("user", f"{pick(rng, PY_ASKS)}\n```python\n{code}```"), ("assistant", answer)),
        "metadata": {"language": "python", "code": code, "stdout": stdout, "error": error},
    }


def _cells(rng: random.Random, difficulty: str) -> list[str]:
    var = pick(rng, ("data", "scores", "temps", "sizes", "ages"))
    values = [num(rng, difficulty) for _ in range({"easy": 4, "medium": 7, "hard": 10}[difficulty])]
    cells = [f"{var} = {values}\nlen({var})"]
    pool = [
        f"sum({var}) / len({var})",
        f"sorted({var})[:3]",
        f"import statistics\nstatistics.median({var})",
        f"{{x: x % 3 for x in {var}[:4]}}",
        f"[x for x in {var} if x > {values[0]}]",
        f"total = sum({var})\nprint('total:', total)\ntotal * 2",
        f"max({var}), min({var})",
    ]
    n_more = {"easy": 1, "medium": 2, "hard": 4}[difficulty]
    return cells + rng.sample(pool, n_more)


def code_exec_jupyter(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """A notebook session: cells share state; outputs are what Jupyter would display."""
    cells = _cells(rng, difficulty)
    outputs = run_cells(cells)
    blocks = [f"{wrap('jupyter_code', c)}\n{wrap('jupyter_output', o.rstrip(chr(10)))}" for c, o in zip(cells, outputs)]
    ask = pick(
        rng,
        (
            "Explore this list in a notebook.",
            "Let's look at these numbers in Jupyter.",
            "Use a notebook to get some quick statistics.",
        ),
    )
    return {
        "messages": chat(rng, ("user", ask), ("assistant", "\n".join(blocks))),
        "metadata": {"language": "python", "cells": cells, "outputs": outputs},
    }


# --------------------------------------------------------------------------- shell


class Shell:
    """A tiny simulated shell on an in-memory directory (files -> list of lines)."""

    def __init__(self) -> None:
        self.files: dict[str, list[str]] = {}

    def write(self, name: str, lines: list[str]) -> str:
        self.files[name] = list(lines)
        return "printf '%s\\n' " + " ".join(lines) + f" > {name}"

    def run(self, rng: random.Random, name: str) -> tuple[str, str]:
        """A random read-only command on file ``name``: (command, exact output)."""
        lines = self.files[name]
        word = pick(rng, lines)
        pattern = word[: rng.randint(2, 3)]
        k = rng.randint(1, max(1, len(lines) - 1))
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        options = [
            (f"cat {name}", lines),
            (f"wc -l < {name}", [str(len(lines))]),
            (f"grep {pattern} {name}", [ln for ln in lines if pattern in ln]),
            (f"grep -c {pattern} {name}", [str(sum(pattern in ln for ln in lines))]),
            (f"sort {name}", sorted(lines)),
            (f"sort -r {name}", sorted(lines, reverse=True)),
            (f"head -n {k} {name}", lines[:k]),
            (f"tail -n {k} {name}", lines[-k:]),
            (f"tr a-z A-Z < {name}", [ln.upper() for ln in lines]),
            (f"sort {name} | head -n 1", sorted(lines)[:1]),
            (f"echo $(( {a} * {b} + {len(lines)} ))", [str(a * b + len(lines))]),
            (f'python3 -c "print(sum(range({a})))"', [str(sum(range(a)))]),
        ]
        command, out = pick(rng, tuple(options))
        return command, "\n".join(out)

    def append(self, name: str, word: str) -> str:
        self.files[name].append(word)
        return f"echo {word} >> {name}"

    def ls(self) -> tuple[str, str]:
        return "ls", "\n".join(sorted(self.files))


def code_exec_shell(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """A shell session in an empty directory: create files, inspect them, append, inspect again."""
    shell = Shell()
    n_files = {"easy": 1, "medium": 2, "hard": 3}[difficulty]
    initials = rng.sample("abcdefghijklmnopqrstuvwxyz", n_files)  # distinct first letters: ls order is locale-proof
    steps: list[tuple[str, str]] = []
    for initial in initials:
        fname = f"{initial}{pick(rng, ('notes', 'list', 'words', 'data'))}.txt"
        words = rng.sample(WORDS, rng.randint(3, 7))
        steps.append((shell.write(fname, words), ""))
    for _ in range({"easy": 2, "medium": 3, "hard": 5}[difficulty]):
        target = pick(rng, tuple(shell.files))
        if rng.random() < 0.2:
            steps.append((shell.append(target, pick(rng, WORDS)), ""))
        steps.append(shell.run(rng, target))
    if n_files > 1:
        steps.append(shell.ls())
    parts = []
    for command, output in steps:
        parts.append(wrap("exec", f"$ {command}"))
        if output:
            parts.append(wrap("exec_result", output))
    who = names(rng, 1)[0]
    ask = pick(
        rng,
        (
            "Run these commands in an empty directory and show the output.",
            f"{who} asked me to check these files. Can you run it?",
            "Please execute this shell session step by step.",
        ),
    )
    listing = "\n".join(c for c, _ in steps)
    return {
        "messages": chat(rng, ("user", f"{ask}\n```bash\n{listing}\n```"), ("assistant", "\n".join(parts))),
        "metadata": {"language": "bash", "commands": [c for c, _ in steps], "outputs": [o for _, o in steps]},
    }


# --------------------------------------------------------------------------- fill in the middle

FIM_P, FIM_S, FIM_M = (SPECIAL_TOKENS[k] for k in ("fim_prefix", "fim_suffix", "fim_middle"))


def _span(rng: random.Random, code: str, difficulty: str) -> tuple[int, int]:
    """Character span of the middle: one line (easy), a few lines (medium), any span (hard)."""
    if difficulty == "hard":
        start = rng.randrange(0, len(code) - 5)
        return start, min(len(code), start + rng.randint(5, 80))
    lines = code.splitlines(keepends=True)
    starts = [sum(map(len, lines[:i])) for i in range(len(lines) + 1)]
    candidates = [i for i, ln in enumerate(lines) if ln.strip()]
    first = pick(rng, tuple(candidates))
    n = 1 if difficulty == "easy" else rng.randint(2, 4)
    last = min(len(lines), first + n)
    return starts[first], starts[last]


def fim(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """A source file cut into prefix / middle / suffix, in PSM (70%) or SPM order."""
    language, code = source_file(rng, difficulty)
    start, end = _span(rng, code, difficulty)
    prefix, middle, suffix = code[:start], code[start:end], code[end:]
    mode = "psm" if rng.random() < 0.7 else "spm"
    if mode == "psm":
        text = f"{FIM_P}{prefix}{FIM_S}{suffix}{FIM_M}{middle}"
    else:
        text = f"{FIM_S}{suffix}{FIM_P}{prefix}{FIM_M}{middle}"
    path = f"{pick(rng, ('src', 'lib', 'app', 'tools'))}/{pick(rng, WORDS)}.{EXTENSIONS[language]}"
    return {
        "text": text,
        "category": "fim",
        "metadata": {
            "language": language,
            "path": path,
            "mode": mode,
            "original": code,
            "middle_start": start,
            "middle_end": end,
        },
    }
