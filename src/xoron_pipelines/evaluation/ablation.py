"""Comparison of ablation variants: held-out score, one row per variant, overlaid loss curves.

Each variant (see ``pipelines/ablation``) is trained by the stage orchestrator and then scored on
the first ``rows`` rows of its validation packing with :mod:`xoron_pipelines.evaluation.perplexity`
(the same scorer as the evaluation pipeline): ``val_loss`` is the mean next-token loss in nats
over the scored tokens, ``bits_per_byte = val_loss / ln 2 x tokens_per_byte`` with
``tokens_per_byte`` the scored tokens per UTF-8 byte of the text behind them. Variants trained on
the same packing are scored on exactly the same tokens; bits per byte also compares variants
whose data (or tokenizer) differ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from xoron_pipelines.evaluation.perplexity import iter_packed_rows, packed_pieces, score

#: the columns of the comparison table, in order
COLUMNS = [
    "variant",
    "model",
    "total_params",
    "active_params",
    "tokens",
    "steps",
    "final_train_loss",
    "final_val_loss",
    "bits_per_byte",
    "tokens_per_byte",
    "wall_s",
]


def score_validation(model, tokenizer, val_shards, rows: int | None, batch_size: int) -> dict[str, float]:
    """Val loss, bits per byte and tokens per byte of ``model`` on the first ``rows`` packed rows
    of ``val_shards`` (a ``ShardSet``; all rows when ``rows`` is None)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pieces = packed_pieces(iter_packed_rows(val_shards, rows), tokenizer)
    result = score(model.eval(), pieces, batch_size, pad_id=pad)
    if not result.tokens or not result.bytes:
        raise ValueError(f"no validation tokens to score in {getattr(val_shards, 'path', val_shards)}")
    return {
        "final_val_loss": result.nll / result.tokens,
        "bits_per_byte": result.bits_per_byte,
        "tokens_per_byte": result.tokens / result.bytes,
        "val_tokens": result.tokens,
        "val_bytes": result.bytes,
    }


def curve(history: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """The loss-curve points of a stage's logged metrics: ``{step, loss}`` and ``{step, eval_loss}``."""
    out = []
    for row in history:
        point = {k: float(row[k]) for k in ("loss", "eval_loss") if row.get(k) is not None}
        if point:
            out.append({"step": float(row["step"]), **point})
    return out


def comparison_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per variant result, the :data:`COLUMNS` in order."""
    names = [r["variant"] for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"ablation results of the same variant twice: {names}")
    return pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in results], columns=COLUMNS)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def comparison_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown (integers with thousands separators, losses to 4 decimals)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v.item() if hasattr(v, "item") else v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def loss_curves_figure(results: Sequence[Mapping[str, Any]], title: str = "ablation: loss curves"):
    """Train loss (lines) and validation loss (markers) of every variant against the tokens it
    has trained on (its ``tokens / steps`` per optimizer step), overlaid on one matplotlib figure
    (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, result in enumerate(results):
        color = f"C{i % 10}"
        points = result.get("curve") or []
        per_step = result["tokens"] / result["steps"] if result.get("steps") else 1.0
        for name, style in (("loss", "-"), ("eval_loss", "o--")):
            xs = [p["step"] * per_step for p in points if name in p]
            ys = [p[name] for p in points if name in p]
            if xs:
                label = result["variant"] + ("" if name == "loss" else " (val)")
                ax.plot(xs, ys, style, color=color, label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


__all__ = ["COLUMNS", "comparison_markdown", "comparison_table", "curve", "loss_curves_figure", "score_validation"]
