"""Small generated programs (Python, JavaScript, Go, Rust) and exact Python execution.

Python programs are run at generation time in a sandboxed child process
(:mod:`xoron_pipelines.sandbox`, never in the pipeline's own process), so every stated output is
what the program really prints. Programs are built only from our own templates.
"""

from __future__ import annotations

import atexit
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from xoron_pipelines.sandbox import SandboxLimits, SandboxWorker

from .common import FUNC_VERBS, VAR_NAMES, WORDS, num, pick

Snippet = Callable[[random.Random, str, str], str]


def _nums(rng: random.Random, difficulty: str, n: int | None = None) -> list[int]:
    n = n or {"easy": 4, "medium": 6, "hard": 9}[difficulty]
    return [num(rng, difficulty) for _ in range(n)]


def _loop_sum(rng: random.Random, difficulty: str, var: str) -> str:
    a, k = rng.randint(0, 10), rng.randint(2, 5)
    b = a + num(rng, difficulty) + 1
    return f"{var} = 0\nfor i in range({a}, {b}):\n    if i % {k} == 0:\n        {var} += i\nprint({var})\n"


def _list_ops(rng: random.Random, difficulty: str, var: str) -> str:
    expr = pick(
        rng,
        (
            f"sorted({var})",
            f"max({var}) - min({var})",
            f"sum(x * x for x in {var})",
            f"[x for x in {var} if x % 2 == 1]",
            f"{var}[::-1][:3]",
            f"len(set({var}))",
        ),
    )
    return f"{var} = {_nums(rng, difficulty)}\nprint({expr})\n"


def _string_ops(rng: random.Random, difficulty: str, var: str) -> str:
    word = pick(rng, WORDS)
    expr = pick(
        rng,
        (
            f"{var}.upper()",
            f"{var}[::-1]",
            f"{var}.count({word[1]!r})",
            f"'-'.join({var})",
            f"{var}.replace({word[0]!r}, '*')",
            f"{var}[1:4]",
            f"len({var}) * 2",
        ),
    )
    return f"{var} = {word!r}\nprint({expr})\n"


def _function(rng: random.Random, difficulty: str, var: str) -> str:
    name = f"{pick(rng, FUNC_VERBS)}_{var}"
    kind = pick(rng, ("fib", "fact", "digits", "gcd"))
    if kind == "fib":
        body, arg = (
            "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
            rng.randint(3, 25),
        )
    elif kind == "fact":
        body, arg = "    out = 1\n    for k in range(2, n + 1):\n        out *= k\n    return out\n", rng.randint(2, 12)
    elif kind == "digits":
        body = "    total = 0\n    while n:\n        total += n % 10\n        n //= 10\n    return total\n"
        arg = num(rng, difficulty, 137)
    else:
        body = f"    m = {num(rng, difficulty, 6)}\n    while m:\n        n, m = m, n % m\n    return n\n"
        arg = num(rng, difficulty, 4)
    return f"def {name}(n):\n{body}\n\nprint({name}({arg}))\n"


def _dict_count(rng: random.Random, difficulty: str, var: str) -> str:
    word = pick(rng, WORDS)
    return f"{var} = {{}}\nfor ch in {word!r}:\n    {var}[ch] = {var}.get(ch, 0) + 1\nprint({var})\n"


def _fizzbuzz(rng: random.Random, difficulty: str, var: str) -> str:
    a, b = rng.randint(2, 4), rng.randint(5, 7)
    n = rng.randint(8, 20)
    return (
        f"for {var} in range(1, {n}):\n    if {var} % {a * b} == 0:\n        print('FizzBuzz')\n"
        f"    elif {var} % {a} == 0:\n        print('Fizz')\n    elif {var} % {b} == 0:\n        print('Buzz')\n"
        f"    else:\n        print({var})\n"
    )


def _format(rng: random.Random, difficulty: str, var: str) -> str:
    x, y = num(rng, difficulty), num(rng, "easy") + 1
    return f"{var} = {x} / {y}\nprint(f'{{{var}:.2f}}')\nprint(round({var}), {x} // {y}, {x} % {y})\n"


def _error(rng: random.Random, difficulty: str, var: str) -> str:
    """A program that raises (uncaught): the stated result is the error line."""
    values = _nums(rng, difficulty, 3)
    return pick(
        rng,
        (
            f"{var} = {values}\nprint({var}[0])\nprint({var}[{len(values) + rng.randint(0, 3)}])\n",
            f"{var} = {values[0]}\nprint({var} // ({values[1]} - {values[1]}))\n",
            f"{var} = {{'a': {values[0]}}}\nprint({var}['a'])\nprint({var}[{pick(rng, WORDS)!r}])\n",
            f"{var} = {pick(rng, WORDS)!r}\nprint(int({var}))\n",
        ),
    )


PY_SNIPPETS: tuple[Snippet, ...] = (_loop_sum, _list_ops, _string_ops, _function, _dict_count, _fizzbuzz, _format)


def python_program(rng: random.Random, difficulty: str, allow_error: bool = True) -> str:
    """1 (easy), 2 (medium) or 3 (hard) snippets; medium/hard sometimes end in an uncaught error."""
    n = {"easy": 1, "medium": 2, "hard": 3}[difficulty]
    var_names = rng.sample(VAR_NAMES, n)
    parts = [pick(rng, PY_SNIPPETS)(rng, difficulty, v) for v in var_names]
    if allow_error and difficulty != "easy" and rng.random() < 0.25:
        parts[-1] = _error(rng, difficulty, var_names[-1])
    return "\n".join(parts)


#: the sandbox's limits for our own templated programs (timeout: a template bug, not a slow program)
LIMITS = SandboxLimits(timeout_s=10.0)

_worker: SandboxWorker | None = None


@contextmanager
def sandbox_session(limits: SandboxLimits = LIMITS) -> Iterator[None]:
    """Programs run inside the block share one sandbox with ``limits`` (started by the first
    program, closed on exit; the first program raises SandboxUnavailableError when generated
    code must be refused: call :func:`xoron_pipelines.sandbox.isolation_mode` first to fail early)."""
    global _worker
    previous, _worker = _worker, SandboxWorker(limits)
    try:
        yield
    finally:
        _worker.close()
        _worker = previous


def _sandbox() -> SandboxWorker:
    """The session's sandbox, else one default sandbox for the interpreter (closed at exit)."""
    global _worker
    if _worker is None:
        _worker = SandboxWorker(LIMITS)
        atexit.register(_worker.close)
    return _worker


def run_python(code: str) -> tuple[str, str | None]:
    """Run ``code`` as a script in the sandbox: (stdout, last traceback line ``"Type: message"`` or None)."""
    result = _sandbox().run(code)
    if result.returncode != 0:  # timed out, died, or the sandbox failed: a template bug, never data
        raise RuntimeError(f"generated program failed in the sandbox ({result.error}):\n{code}")
    return result.stdout, result.error


def run_cells(cells: list[str]) -> list[str]:
    """Run notebook cells in one sandboxed namespace; each output is what Jupyter shows (printed
    text, then the ``repr`` of a final expression that is not None)."""
    return _sandbox().run_cells(cells)


# --------------------------------------------------------------------------- other languages


def _javascript(rng: random.Random, difficulty: str) -> str:
    name = f"{pick(rng, FUNC_VERBS)}{pick(rng, VAR_NAMES).capitalize()}"
    values = _nums(rng, difficulty)
    op = pick(rng, ("x * 2", "x + 1", "x % 3", "x * x"))
    return (
        f"function {name}(xs) {{\n  const out = [];\n  for (const x of xs) {{\n    out.push({op});\n  }}\n"
        f"  return out;\n}}\n\nconsole.log({name}({values}));\n"
    )


def _go(rng: random.Random, difficulty: str) -> str:
    name = f"{pick(rng, FUNC_VERBS)}{pick(rng, VAR_NAMES).capitalize()}"
    values = ", ".join(map(str, _nums(rng, difficulty)))
    return (
        f'package main\n\nimport "fmt"\n\nfunc {name}(xs []int) int {{\n\ttotal := 0\n'
        f"\tfor _, x := range xs {{\n\t\ttotal += x\n\t}}\n\treturn total\n}}\n\n"
        f"func main() {{\n\tfmt.Println({name}([]int{{{values}}}))\n}}\n"
    )


def _rust(rng: random.Random, difficulty: str) -> str:
    name = f"{pick(rng, FUNC_VERBS)}_{pick(rng, VAR_NAMES)}"
    return (
        f"fn {name}(n: u64) -> u64 {{\n    (1..=n).product()\n}}\n\n"
        f'fn main() {{\n    let k = {rng.randint(2, 12)};\n    println!("{{}}", {name}(k));\n}}\n'
    )


def source_file(rng: random.Random, difficulty: str) -> tuple[str, str]:
    """(language, source code) in one of four languages."""
    language = pick(rng, ("python", "python", "javascript", "go", "rust"))
    makers = {"javascript": _javascript, "go": _go, "rust": _rust}
    if language == "python":
        return language, python_program(rng, difficulty, allow_error=False)
    return language, makers[language](rng, difficulty)


EXTENSIONS = {"python": "py", "javascript": "js", "go": "go", "rust": "rs"}
