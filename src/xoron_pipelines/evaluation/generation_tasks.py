"""Generation tasks: gsm8k-style exact match on the final number and humaneval-style pass@k.

* gsm8k: the reference answer ends in ``#### <number>``; a prediction's number is the one after
  its last ``####`` if it has one (the harness's strict match), else the last number in its
  visible text (hidden blocks such as ``<|think|>`` removed; the harness's flexible extract).
  Numbers are compared as decimals after removing ``$`` and thousands separators, so
  ``"1,234."`` equals ``"1234"`` and ``"2.50"`` equals ``"2.5"``.
* humaneval: program = prompt + completion + test + ``check(entry_point)``, run in a fresh
  sandbox (:func:`xoron_pipelines.sandbox.run_python`: own user/pid/net/mount namespaces,
  read-only root, private ``/tmp``, rlimits, timeout), never in this process. A completion
  passes only when the whole program runs to completion: ``exit()``, ``os._exit(0)`` or a
  forged result line are failures. ``pass@k`` is the unbiased estimator of the Codex paper
  (Chen et al., 2021): ``1 - C(n-c, k) / C(n, k)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

from xoron_pipelines.sandbox import SandboxLimits, SandboxResult, run_python
from xoron_pipelines.tokens import strip_hidden_tokens

_STRICT = re.compile(r"####\s*(-?[$0-9.,]*[0-9])")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")

# Codex paper: stop when the model starts a new top-level statement after the function body.
HUMANEVAL_STOP = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\nassert ")


def normalise_number(text: str) -> str | None:
    """``"$1,234.50"`` -> ``"1234.5"``; None when ``text`` is not a number."""
    cleaned = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = value.normalize()
    return format(value.quantize(Decimal(1)) if value == value.to_integral_value() else value, "f")


def extract_final_number(text: str) -> str | None:
    """The final answer of a gsm8k-style solution (see the module docstring), normalised."""
    strict = _STRICT.findall(text)
    if strict:
        return normalise_number(strict[-1])
    numbers = _NUMBER.findall(strip_hidden_tokens(text))
    return normalise_number(numbers[-1]) if numbers else None


def gsm8k_exact_match(prediction: str, reference: str) -> float:
    """1.0 when the prediction's final number equals the reference's ``####`` number."""
    gold = extract_final_number(reference)
    pred = extract_final_number(prediction)
    return float(gold is not None and pred == gold)


def truncate_at(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest stop sequence (whole text when none occurs)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c,k)/C(n,k),
    computed as a stable product (Codex paper)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def humaneval_program(problem: dict, completion: str) -> str:
    """The program that checks one completion: prompt + completion, the tests, the check call."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def check_completion(problem: dict, completion: str, limits: SandboxLimits) -> SandboxResult:
    """Run one completion against the problem's tests in a fresh sandboxed child process."""
    return run_python(humaneval_program(problem, completion), limits)
