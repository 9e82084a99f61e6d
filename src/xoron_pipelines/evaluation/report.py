"""Per-stage figures with their error bars, and the cross-stage comparison table and chart.

A stage's *figures* (:func:`figures`) are ``{"task.metric": Figure}``: the value, its number of
items ``n``, its 95% interval (``lo``, ``hi``; :func:`xoron_pipelines.evaluation.stats.interval`),
the chance level and the per-item columns the value is computed from, so that two stages scored on
the same items can be compared with a paired bootstrap.

The comparison table has one row per figure and, per column (the untrained starting model first,
then the stages in training order), the value and its interval; beside every column after the first,
the change from the column before with its paired 95% interval and whether it is significant (the
interval excludes 0). A change inside the interval is marked ``n.s.`` in the markdown table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from xoron_pipelines.evaluation import stats

# Metrics where lower is better; every other metric is an accuracy-like score in [0, 1].
LOWER_IS_BETTER = ("perplexity", "bits_per_byte")
UNTRAINED = "untrained"  # the namespace that evaluates the initialised (untrained) model
_SKIP = {"n", "chance", "nll", "tokens", "bytes", "sequences", "samples"}


def flatten(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{"task": {"metric": v}}`` -> ``{"task.metric": v}`` (counts, chance and non-numbers dropped)."""
    return {
        f"{task}.{metric}": float(value)
        for task, metrics in results.items()
        for metric, value in metrics.items()
        if metric not in _SKIP and isinstance(value, (int, float))
    }


def figure(columns: Sequence[Sequence[float]], kind: str, value: float, chance: float, seed: int = 0) -> dict:
    """One figure: value, n, 95% interval, chance, and the per-item ``columns`` of statistic ``kind``."""
    lo, hi = stats.interval(columns, kind, seed)
    cols = [[float(x) for x in c] for c in columns]
    return {"value": float(value), "n": len(cols[0]), "lo": lo, "hi": hi, "chance": float(chance), "kind": kind,
            "items": cols}  # fmt: skip


def figures(
    tasks: Mapping[str, Mapping[str, Any]], records: Sequence[Mapping[str, Any]], ppl: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict]:
    """Every figure of one stage from the task summaries, the per-item records (``task`` + the
    metric per item) and the perplexity results (with ``items`` and ``chance``)."""
    out: dict[str, dict] = {}
    for task, summary in tasks.items():
        rows = [r for r in records if r.get("task") == task]
        for metric, value in summary.items():
            if metric in _SKIP:
                continue
            column = [r[metric] for r in rows]
            if len(column) != summary.get("n", len(column)):
                raise ValueError(f"{task}.{metric}: {len(column)} item records for n={summary.get('n')}")
            out[f"{task}.{metric}"] = figure([column], "mean", value, summary.get("chance", math.nan))
    for name, result in ppl.items():
        items = result["items"]
        for metric, denom in (("perplexity", "tokens"), ("bits_per_byte", "bytes")):
            out[f"ppl_{name}.{metric}"] = figure(
                [items["nll"], items[denom]], metric, result[metric], result["chance"][metric]
            )
    return out


def comparison_table(
    by_column: Mapping[str, Mapping[str, dict]], columns: Sequence[str], seed: int = 0
) -> pd.DataFrame:
    """Rows: figures; for each column ``c`` (a stage, or the untrained model): ``c``, ``c_lo``,
    ``c_hi``; for each column after the first, ``delta_c`` (``c`` minus the column before, on the
    same items), ``delta_c_lo`` / ``delta_c_hi`` (paired bootstrap 95% interval) and ``delta_c_sig``
    (the interval excludes 0). Also ``n`` and ``chance`` (of the first column that has the figure)."""
    metrics = sorted({m for c in columns for m in by_column[c]})
    rows = []
    for m in metrics:
        present = [by_column[c][m] for c in columns if m in by_column[c]]
        row: dict[str, Any] = {"metric": m, "n": present[0]["n"], "chance": present[0]["chance"]}
        for c in columns:
            f = by_column[c].get(m)
            row[c], row[f"{c}_lo"], row[f"{c}_hi"] = (f["value"], f["lo"], f["hi"]) if f else (math.nan,) * 3
        for prev, c in zip(columns, columns[1:]):
            a, b = by_column[prev].get(m), by_column[c].get(m)
            if a is None or b is None or a["n"] != b["n"]:
                d = (math.nan, math.nan, math.nan)
            else:
                d = stats.paired_difference(a["items"], b["items"], a["kind"], seed)
            row[f"delta_{c}"], row[f"delta_{c}_lo"], row[f"delta_{c}_hi"] = d
            row[f"delta_{c}_sig"] = bool(d[1] > 0 or d[2] < 0)
        row["better"] = "lower" if m.endswith(LOWER_IS_BETTER) else "higher"
        rows.append(row)
    return pd.DataFrame(rows)


def _num(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def to_markdown(table: pd.DataFrame, columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table: ``value [lo, hi]`` per column, the change from the
    column before (``n.s.`` when its paired interval contains 0), then a legend."""
    head = ["metric", "n", "chance"]
    for i, c in enumerate(columns):
        head += [c] if i == 0 else [f"Δ {c}", c]
    lines = ["| " + " | ".join([*head, "better"]) + " |", "|" + "|".join("---" for _ in range(len(head) + 1)) + "|"]
    for r in table.to_dict("records"):
        cells = [r["metric"], str(int(r["n"])), _num(r["chance"])]
        for i, c in enumerate(columns):
            if i:
                d = r[f"delta_{c}"]
                mark = "" if r[f"delta_{c}_sig"] or math.isnan(d) else " n.s."
                cells.append("–" if math.isnan(d) else f"{d:+.3g}{mark}")
            cells.append(f"{_num(r[c])} [{_num(r[f'{c}_lo'])}, {_num(r[f'{c}_hi'])}]")
        lines.append("| " + " | ".join([*cells, r["better"]]) + " |")
    legend = (
        "\n[lo, hi]: 95% interval (Wilson for items scored 0/1, seeded percentile bootstrap otherwise). "
        "Δ: change from the column before on the same items; n.s.: its paired-bootstrap 95% interval "
        "contains 0 (not significant). chance: a text-blind scorer (1/choices; 0 for generation; a uniform "
        "distribution over the vocabulary for perplexity).\n"
    )
    return "\n".join(lines) + "\n" + legend


def comparison_figure(table: pd.DataFrame, columns: Sequence[str]) -> go.Figure:
    """Grouped bars per figure (labelled with its n) with 95% error bars, one colour per column
    (untrained first); chance levels as black markers. Scores (higher is better) on top,
    perplexity / bits per byte (lower is better) below."""
    lower = table["better"] == "lower"
    table = table.assign(label=[f"{m} (n={int(n)})" for m, n in zip(table["metric"], table["n"])])
    fig = make_subplots(
        rows=2, cols=1, subplot_titles=("scores (higher is better)", "perplexity / bits per byte (lower is better)")
    )
    for i, c in enumerate(columns):
        for row, part in ((1, table[~lower]), (2, table[lower])):
            fig.add_trace(
                go.Bar(
                    name=c,
                    x=part["label"],
                    y=part[c],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": part[f"{c}_hi"] - part[c],
                        "arrayminus": part[c] - part[f"{c}_lo"],
                    },  # fmt: skip
                    legendgroup=c,
                    showlegend=row == 1,
                    marker_color=_COLOURS[i % len(_COLOURS)],
                ),
                row=row,
                col=1,
            )
    for row, part in ((1, table[~lower]), (2, table[lower])):
        fig.add_trace(
            go.Scatter(
                name="chance",
                x=part["label"],
                y=part["chance"],
                mode="markers",
                marker={"symbol": "line-ew-open", "size": 28, "color": "black"},
                legendgroup="chance",
                showlegend=row == 1,
            ),
            row=row,
            col=1,
        )
    fig.update_layout(barmode="group", title="Evaluation by training stage (95% intervals)", height=800)
    return fig


_COLOURS = ("#7f7f7f", "#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3")


def stage_columns(table: pd.DataFrame) -> list[str]:
    """The value columns of a comparison table (the untrained model, then the stages), in order:
    not metric / n / chance / better, the deltas or the interval bounds."""
    return [
        c
        for c in table.columns
        if c not in ("metric", "n", "chance", "better")
        and not c.startswith("delta_")
        and not c.endswith(("_lo", "_hi", "_sig"))
    ]


def comparison_png_figure(table: pd.DataFrame):
    """The chart of :func:`comparison_figure` as a matplotlib figure (for the PNG artefact of the
    MLflow run: the plotly JSON is for kedro viz, the UI shows images). Built without pyplot, so
    nothing global is left open."""
    from matplotlib.figure import Figure

    stages = stage_columns(table)
    lower = table["better"] == "lower"
    parts = [
        ("scores (higher is better)", table[~lower]),
        ("perplexity / bits per byte (lower is better)", table[lower]),
    ]
    parts = [(title, part) for title, part in parts if len(part)]
    fig = Figure(figsize=(max(6.0, 0.6 * len(table) * max(1, len(stages)) / 2), 3.5 * max(1, len(parts))))
    width = 0.8 / max(1, len(stages))
    for row, (title, part) in enumerate(parts):
        ax = fig.add_subplot(len(parts), 1, row + 1)
        for i, stage in enumerate(stages):
            xs = [x + (i - (len(stages) - 1) / 2) * width for x in range(len(part))]
            values = part[stage].astype(float)
            errors = None
            if f"{stage}_lo" in part and f"{stage}_hi" in part:  # the 95% interval as error bars
                below = (values - part[f"{stage}_lo"].astype(float)).clip(lower=0).fillna(0)
                above = (part[f"{stage}_hi"].astype(float) - values).clip(lower=0).fillna(0)
                errors = [below, above]  # a bootstrap interval of a ratio need not hold the value
            ax.bar(xs, values, width, yerr=errors, capsize=2, label=stage, color=_COLOURS[i % len(_COLOURS)])
        if "chance" in part:
            ax.scatter(range(len(part)), part["chance"].astype(float), marker="_", s=200, color="black", label="chance")
        ax.set_xticks(range(len(part)), part["metric"], rotation=30, ha="right", fontsize="small")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if row == 0:
            ax.legend(fontsize="small")
    fig.suptitle("Evaluation by training stage")
    fig.tight_layout()
    return fig
