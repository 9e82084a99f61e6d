"""Multiple choice by log-likelihood, as lm-evaluation-harness scores it.

Each choice is scored as the continuation ``delimiter + choice`` of the item's context:

* ``acc``: the choice with the highest summed log-likelihood is the gold one;
* ``acc_norm``: the same after dividing each log-likelihood by the choice's length. The harness
  divides by ``len(choice)`` in characters (``unit="chars"``, the default); ``unit="bytes"``
  divides by the UTF-8 byte length instead (the two agree on ASCII text);
* ``mc2`` (truthfulqa, items with ``labels``): the probability mass of the true choices,
  ``sum(p_true) / (sum(p_true) + sum(p_false))`` with ``p = exp(loglikelihood)``.

The chance level of an item (:func:`chance_level`) is what a scorer that ignores the text gets in
expectation: ``1 / choices`` for acc / acc_norm, ``true choices / choices`` for mc2 (equal
probabilities); a task's chance is the mean over its items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

LengthUnit = Literal["chars", "bytes"]


@dataclass(frozen=True)
class MCItem:
    """One question: context, choices, gold index; ``labels`` (1 true / 0 false per choice) when
    several choices are true (truthfulqa mc2)."""

    context: str
    choices: tuple[str, ...]
    gold: int
    labels: tuple[int, ...] | None = None
    delimiter: str = " "
    meta: dict = field(default_factory=dict, compare=False)


def choice_length(choice: str, unit: LengthUnit) -> float:
    return float(len(choice.encode("utf-8")) if unit == "bytes" else len(choice))


def score_item(item: MCItem, lls: Sequence[float], unit: LengthUnit = "chars") -> dict[str, float]:
    """acc / acc_norm of one item from its choices' lls; only mc2 for an item with labels."""
    lls_arr = np.asarray(lls, dtype=np.float64)
    if item.labels is not None:
        p = np.exp(lls_arr - lls_arr.max())  # a common factor leaves the ratio unchanged; no underflow
        true = np.asarray(item.labels, dtype=bool)
        return {"mc2": float(p[true].sum() / p.sum())}
    lengths = np.array([choice_length(c, unit) for c in item.choices])
    return {
        "acc": float(int(np.argmax(lls_arr)) == item.gold),
        "acc_norm": float(int(np.argmax(lls_arr / np.maximum(lengths, 1.0))) == item.gold),
    }


def chance_level(item: MCItem) -> float:
    """Expected score of a text-blind scorer on ``item`` (see the module docstring)."""
    if item.labels is not None:
        return sum(item.labels) / len(item.labels)
    return 1.0 / len(item.choices)


def evaluate(
    items: Sequence[MCItem], loglikelihood: Callable[[list[tuple[str, str]]], list[float]], unit: LengthUnit = "chars"
) -> tuple[dict[str, float], list[dict]]:
    """Score ``items`` with ``loglikelihood([(context, continuation), ...]) -> [ll, ...]``.

    Returns the mean of each metric over the items (plus ``n`` and ``chance``, see
    :func:`chance_level`) and one record per item (its lls, the predicted index and its metrics)."""
    requests = [(it.context, it.delimiter + c) for it in items for c in it.choices]
    lls = loglikelihood(requests) if requests else []
    records, pos = [], 0
    for it in items:
        item_lls = lls[pos : pos + len(it.choices)]
        pos += len(it.choices)
        metrics = score_item(it, item_lls, unit)
        records.append(
            {
                **it.meta,
                "gold": it.gold,
                "pred": int(np.argmax(item_lls)),
                "loglikelihoods": [float(x) for x in item_lls],
                **metrics,
            }
        )
    keys = sorted({k for r in records for k in ("acc", "acc_norm", "mc2") if k in r})
    summary = {k: float(np.mean([r[k] for r in records if k in r])) for k in keys}
    summary["n"] = float(len(items))
    summary["chance"] = float(np.mean([chance_level(it) for it in items])) if items else float("nan")
    return summary, records
