"""Held-out preference accuracy of the preference (DPO) stage beside its reference model.

A DPO stage claims its model learned to prefer the chosen answer. The figure that shows it is the
share of held-out pairs (never trained on: the stage's own validation split, drawn by the same
seeded :func:`~xoron_pipelines.training.stage_data.chat_split`) on which

* ``implicit_reward_accuracy``: the DPO implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))``
  of the chosen answer exceeds the rejected one's (policy against reference);
* ``margin_accuracy`` of the policy: its summed answer log-prob is higher for the chosen answer;
* ``margin_accuracy`` of the reference (the stage's starting model, ``tools.model``): the same
  on the model before preference training -- the baseline the policy must beat.

Each figure carries its ``n``, its count and a 95% Wilson score interval (:func:`wilson_interval`).
Log-probs: :func:`xoron_pipelines.training.dpo.pair_logps` (exact sums over the answer tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from xoron_pipelines.training import stage_data, user_data
from xoron_pipelines.training.dpo import pair_logps, preference_counts
from xoron_pipelines.training.schema import StageParams

#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``successes / n`` (95% by default)."""
    if n <= 0:
        raise ValueError(f"a proportion needs n > 0, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _figure(correct: float, n: int) -> dict[str, float]:
    lo, hi = wilson_interval(int(correct), n)
    return {"value": correct / n, "correct": int(correct), "n": n, "ci_low": lo, "ci_high": hi}


def held_out_pairs(params: StageParams, tokenizer, synth_raw: Mapping[str, Any], max_len: int) -> list[dict]:
    """The validation pairs of a DPO stage: its sources read and rendered as the stage does, split
    with the stage's seed and ``eval.val_fraction`` -- the same pairs the stage held out."""
    cfg = params.train
    data = user_data.load_chat_data("preference", "dpo", params.sources, synth_raw, tokenizer, max_len, cfg.seed)
    _, val = stage_data.chat_split(data, params.sources, params.eval.val_fraction, params.max_samples, cfg.seed)
    return val


def preference_accuracy(
    policy: nn.Module, reference: nn.Module, pairs: list[dict], beta: float, batch_size: int, pad_id: int
) -> dict[str, Any]:
    """The held-out preference figures of ``policy`` against ``reference`` on ``pairs`` (rendered
    preference examples): ``{"n", "beta", "policy": {"implicit_reward_accuracy", "margin_accuracy"},
    "reference": {"margin_accuracy"}}``, each figure ``{value, correct, n, ci_low, ci_high}``."""
    counts = preference_counts(
        pair_logps(policy, pairs, batch_size, pad_id), pair_logps(reference, pairs, batch_size, pad_id), beta
    )
    n = int(counts["n"])
    return {
        "n": n,
        "beta": beta,
        "policy": {
            "implicit_reward_accuracy": _figure(counts["implicit_reward_correct"], n),
            "margin_accuracy": _figure(counts["policy_margin_correct"], n),
        },
        "reference": {"margin_accuracy": _figure(counts["reference_margin_correct"], n)},
    }


def flat_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """``preference_accuracy.<model>.<figure>[_ci_low|_ci_high]`` and ``preference_accuracy.n``."""
    out = {"preference_accuracy.n": float(result["n"])}
    for model in ("policy", "reference"):
        for name, fig in result[model].items():
            key = f"preference_accuracy.{model}.{name}"
            out.update({key: fig["value"], f"{key}_ci_low": fig["ci_low"], f"{key}_ci_high": fig["ci_high"]})
    return out


def comparison_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: metric, policy value and interval beside the reference's."""
    ref = result["reference"]["margin_accuracy"]
    rows = []
    for name, fig in result["policy"].items():
        rows.append(
            {
                "metric": f"preference_accuracy.{name}",
                "n": result["n"],
                "policy": fig["value"],
                "policy_ci": [fig["ci_low"], fig["ci_high"]],
                "reference_margin": ref["value"],
                "reference_ci": [ref["ci_low"], ref["ci_high"]],
                "separated": fig["ci_low"] > ref["ci_high"] or fig["ci_high"] < ref["ci_low"],
            }
        )
    return rows


__all__ = ["comparison_rows", "flat_metrics", "held_out_pairs", "preference_accuracy", "wilson_interval"]
