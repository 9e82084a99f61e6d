"""Error bars: Wilson and bootstrap intervals against references computed from their definitions,
chance levels, and the paired stage-to-stage difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eval_stubs import TableLM

from xoron_pipelines.evaluation import multiple_choice as mc
from xoron_pipelines.evaluation import perplexity, stats


def _wilson_by_definition(k: int, n: int, z: float = stats.Z95) -> tuple[float, float]:
    """The Wilson interval is the set of p whose score test accepts k/n: |k/n - p| <= z sqrt(p(1-p)/n).
    Its ends are found by bisection on each side of k/n (no closed form used)."""
    phat = k / n

    def accepted(p: float) -> bool:
        return abs(phat - p) <= z * math.sqrt(p * (1 - p) / n)

    def edge(inside: float, outside: float) -> float:
        for _ in range(200):
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if accepted(mid) else (inside, mid)
        return inside

    lo = 0.0 if k == 0 else edge(phat, 0.0)
    hi = 1.0 if k == n else edge(phat, 1.0)
    return lo, hi


@pytest.mark.parametrize("k, n", [(0, 20), (1, 20), (10, 20), (50, 200), (173, 200), (200, 200), (3, 7)])
def test_wilson_matches_the_score_test_inversion(k, n):
    lo, hi = stats.wilson_interval(k, n)
    ref_lo, ref_hi = _wilson_by_definition(k, n)
    assert lo == pytest.approx(ref_lo, abs=1e-9) and hi == pytest.approx(ref_hi, abs=1e-9)
    assert lo <= k / n <= hi
    if k == 0:
        assert lo == 0.0  # exactly: no 6.9e-18 in the tables
    if k == n:
        assert hi == 1.0


def test_wilson_half_width_near_one_half_is_about_098_over_sqrt_n():
    lo, hi = stats.wilson_interval(100, 200)
    assert (hi - lo) / 2 == pytest.approx(0.98 / math.sqrt(200), rel=0.01)
    assert stats.interval([[1.0] * 100 + [0.0] * 100]) == (lo, hi)  # 0/1 items use Wilson


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    true_mean, hits, trials = 2.0, 0, 300
    for t in range(trials):
        sample = rng.exponential(true_mean, size=150)  # skewed, not 0/1: the bootstrap path
        lo, hi = stats.interval([sample], "mean", seed=t)
        hits += lo <= true_mean <= hi
    # binomial(300, 0.95) lies in [0.91, 0.98] with probability > 0.999; a broken interval does not
    assert 0.91 <= hits / trials <= 0.985, hits / trials


def test_bootstrap_is_seeded_and_ratio_statistics_resample_sums():
    nll, tokens = [3.0, 10.0, 1.0, 6.0], [2, 5, 1, 4]
    a = stats.bootstrap_interval([nll, tokens], "perplexity", seed=3)
    assert a == stats.bootstrap_interval([nll, tokens], "perplexity", seed=3)
    point = math.exp(sum(nll) / sum(tokens))
    assert a[0] <= point <= a[1]
    same = stats.bootstrap_interval([[2.0] * 5, [1.0] * 5], "perplexity")  # every item alike: no spread
    assert same == pytest.approx((math.exp(2.0), math.exp(2.0)))
    bpb = stats.bootstrap_interval([[2.0] * 5, [4.0] * 5], "bits_per_byte")
    assert bpb == pytest.approx((0.5 / math.log(2), 0.5 / math.log(2)))


def test_paired_difference_marks_only_real_changes():
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.5).astype(float)
    same = stats.paired_difference([base], [base])
    assert same == (0.0, 0.0, 0.0)
    flipped = base.copy()
    flipped[np.flatnonzero(base == 0)[:40]] = 1.0  # +0.2 on the same items
    d, lo, hi = stats.paired_difference([base], [flipped])
    assert d == pytest.approx(0.2) and lo > 0
    tiny = base.copy()
    tiny[np.flatnonzero(base == 0)[:2]] = 1.0  # +0.01: inside the interval
    d, lo, hi = stats.paired_difference([base], [tiny])
    assert d == pytest.approx(0.01) and lo <= 0 <= hi
    with pytest.raises(ValueError, match="same items"):
        stats.paired_difference([base], [base[:10]])


def test_chance_levels():
    four = mc.MCItem("q", ("a", "b", "c", "d"), 0)
    mc2 = mc.MCItem("q", tuple("abcdef"), 0, labels=(1, 1, 0, 0, 0, 0))
    assert mc.chance_level(four) == 0.25 and mc.chance_level(mc2) == pytest.approx(1 / 3)
    summary, _ = mc.evaluate([four, mc.MCItem("q", ("a", "b"), 1)], lambda reqs: [0.0] * len(reqs))
    assert summary["chance"] == pytest.approx((0.25 + 0.5) / 2)
    # a model with equal logits everywhere is the uniform chance level of perplexity / bits per byte
    vocab = 7
    result = perplexity.score(TableLM(torch.zeros(vocab, vocab)), [([1, 2, 3, 4], 9), ([5, 6], 3)], batch_size=2)
    chance = result.uniform_chance(vocab)
    assert result.perplexity == pytest.approx(chance["perplexity"]) == vocab
    assert result.bits_per_byte == pytest.approx(chance["bits_per_byte"])
    assert result.items == {"nll": pytest.approx([3 * math.log(7), math.log(7)]), "tokens": [3, 1], "bytes": [9, 3]}
