"""gsm8k final-number exact match, the pass@k estimator, humaneval checks in the sandbox."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from xoron_pipelines.evaluation import generation_tasks as gen
from xoron_pipelines.evaluation import offline_tasks
from xoron_pipelines.sandbox import SandboxLimits


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48 / 2 = 24 clips.\n#### 72", "72"),
        ("so 3 + 4 = 7 apples. The answer is 1,234.", "1234"),
        ("The temperature fell to -15 degrees.", "-15"),
        ("Each costs $2.50, so the total is $12.50.", "12.5"),
        ("#### -3.0", "-3"),
        ("<|think|>\n<|step|> 5 × 7 = 35\n<|/think|>\nThe result is 35.", "35"),
        ("#### 1,000 and then 7", "1000"),
        ("no numbers here", None),
    ],
)
def test_extract_final_number(text, expected):
    assert gen.extract_final_number(text) == expected


def test_gsm8k_exact_match():
    reference = "Step: 6 × 7 = 42.\n#### 42"
    assert gen.gsm8k_exact_match("So she has 42.", reference) == 1.0
    assert gen.gsm8k_exact_match("So she has 42.0 dollars.", reference) == 1.0
    assert gen.gsm8k_exact_match("42 was wrong, it is 41.", reference) == 0.0
    assert gen.gsm8k_exact_match("", reference) == 0.0


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (10, 3, 5), (20, 0, 4), (7, 6, 2)])
def test_pass_at_k_matches_closed_form_and_enumeration(n, c, k):
    closed = 1 - math.comb(n - c, k) / math.comb(n, k)
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    brute = sum(any(s) for s in subsets) / len(subsets)
    assert math.isclose(gen.pass_at_k(n, c, k), closed, abs_tol=1e-12)
    assert math.isclose(gen.pass_at_k(n, c, k), brute, abs_tol=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        gen.pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        gen.pass_at_k(3, 1, 4)


def test_truncate_at_the_first_stop():
    text = "    return x + 1\n\ndef other():\n    pass\n#"
    assert gen.truncate_at(text, gen.HUMANEVAL_STOP) == "    return x + 1\n"
    assert gen.truncate_at("abc", ("z",)) == "abc"


def test_humaneval_correct_wrong_and_infinite_loop_in_the_sandbox():
    problem = offline_tasks.function_synthesis(random.Random(3), 1)[0]
    limits = SandboxLimits(timeout_s=3.0, memory_mb=512, cpu_s=5)
    assert gen.check_completion(problem, problem["canonical_solution"], limits).ok
    wrong = gen.check_completion(problem, "    return None\n", limits)
    assert not wrong.ok and wrong.error.startswith("AssertionError")
    loop = gen.check_completion(problem, "    while True:\n        pass\n", limits)
    assert loop.timed_out and not loop.ok


def test_completions_cannot_reach_the_pipeline_process():
    problem = {
        "prompt": "def f():\n",
        "test": "def check(candidate):\n    assert candidate() == 1\n",
        "entry_point": "f",
    }
    res = gen.check_completion(
        problem, "    import socket\n    socket.create_connection(('1.1.1.1', 80))\n", SandboxLimits(timeout_s=5.0)
    )
    assert not res.ok and "Network is unreachable" in res.error  # its own network namespace
