"""Error bars of evaluation figures: 95% intervals, chance levels, paired stage-to-stage differences.

* accuracies whose items score 0 or 1 (``acc``, ``acc_norm``, ``exact_match``, ``pass@1`` of one
  sample): the Wilson score interval (well behaved near 0 and 1, unlike the normal approximation);
* every other figure (``mc2``, ``pass@k`` of several samples, perplexity, bits per byte): a seeded
  percentile bootstrap over the items. Perplexity / bits per byte are ratios of sums (the NLL of all
  tokens over their count / bytes), so a resample recomputes the ratio, not a mean of per-text ratios;
* a stage-to-stage difference: a paired bootstrap on the same items (both stages scored the same
  item list), the difference counted as significant when its 95% interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (``(nan, nan)`` when ``n`` is 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 / n (or n / n) the bound is exactly 0 (or 1): the formula leaves float noise (6.9e-18)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def _statistic(kind: str):
    """How a metric is computed from per-item arrays: ``mean`` of one array, or a ratio of sums:
    ``perplexity`` = exp(sum nll / sum tokens), ``bits_per_byte`` = sum nll / (ln 2 * sum bytes)."""
    if kind == "mean":
        return lambda cols, idx: cols[0][idx].mean(axis=-1)
    if kind == "perplexity":
        return lambda cols, idx: np.exp(cols[0][idx].sum(axis=-1) / cols[1][idx].sum(axis=-1))
    if kind == "bits_per_byte":
        return lambda cols, idx: cols[0][idx].sum(axis=-1) / (math.log(2) * cols[1][idx].sum(axis=-1))
    raise ValueError(f"unknown statistic {kind!r}")


def _resamples(n: int, seed: int, resamples: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(
    columns: Sequence[Sequence[float]],
    kind: str = "mean",
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the statistic ``kind`` (see :func:`_statistic`) over items;
    ``columns`` are per-item arrays of equal length (one for ``mean``, two for the ratios)."""
    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    n = len(cols[0])
    if n == 0:
        return math.nan, math.nan
    values = _statistic(kind)(cols, _resamples(n, seed, resamples))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_difference(
    before: Sequence[Sequence[float]],
    after: Sequence[Sequence[float]],
    kind: str = "mean",
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(difference, lo, hi): ``after - before`` of the statistic on the same items, with a paired
    bootstrap interval (one resample of item indices applied to both). Raises ``ValueError`` when
    the two were not scored on the same number of items."""
    b = [np.asarray(c, dtype=np.float64) for c in before]
    a = [np.asarray(c, dtype=np.float64) for c in after]
    n = len(b[0])
    if len(a[0]) != n:
        raise ValueError(f"paired difference needs the same items: {n} before, {len(a[0])} after")
    stat = _statistic(kind)
    full = np.arange(n)
    diff = float(stat(a, full) - stat(b, full))
    idx = _resamples(n, seed, resamples)
    values = stat(a, idx) - stat(b, idx)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return diff, float(lo), float(hi)


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def interval(columns: Sequence[Sequence[float]], kind: str = "mean", seed: int = 0) -> tuple[float, float]:
    """95% interval of a figure: Wilson for a mean of 0/1 items, else the bootstrap."""
    if kind == "mean" and is_binary(columns[0]):
        return wilson_interval(float(sum(columns[0])), len(columns[0]))
    return bootstrap_interval(columns, kind, seed)
