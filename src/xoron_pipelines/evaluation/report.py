"""Cross-stage report: a comparison table (one row per metric, one column per stage plus the
change each stage made relative to the one before) and a plotly figure of the same numbers.

Metrics are flat ``{"task.metric": value}`` dicts, one per stage, in training order
(language -> code -> tools -> preference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Metrics where lower is better; every other metric is an accuracy-like score in [0, 1].
LOWER_IS_BETTER = ("perplexity", "bits_per_byte")


def flatten(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"task": {"metric": v}}`` -> ``{"task.metric": v}`` (counts such as ``n`` dropped)."""
    skip = {"n", "nll", "tokens", "bytes", "sequences", "samples"}
    return {
        f"{task}.{metric}": float(value)
        for task, metrics in results.items()
        for metric, value in metrics.items()
        if metric not in skip
    }


def comparison_table(by_stage: Mapping[str, Mapping[str, float]], stages: Sequence[str]) -> pd.DataFrame:
    """Rows: metrics; columns: ``metric``, each stage, and ``delta_<stage>`` (this stage minus the
    previous one) for every stage after the first."""
    metrics = sorted({m for s in stages for m in by_stage[s]})
    table = pd.DataFrame({"metric": metrics})
    for stage in stages:
        table[stage] = [by_stage[stage].get(m, math.nan) for m in metrics]
    for prev, stage in zip(stages, stages[1:]):
        table[f"delta_{stage}"] = table[stage] - table[prev]
    table["better"] = ["lower" if m.endswith(LOWER_IS_BETTER) else "higher" for m in metrics]
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""

    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def comparison_figure(table: pd.DataFrame, stages: Sequence[str]) -> go.Figure:
    """Grouped bars per metric, one colour per stage: scores (higher is better) on top,
    perplexity / bits-per-byte (lower is better) below."""
    lower = table["better"] == "lower"
    fig = make_subplots(
        rows=2, cols=1, subplot_titles=("scores (higher is better)", "perplexity / bits per byte (lower is better)")
    )
    for i, stage in enumerate(stages):
        for row, part in ((1, table[~lower]), (2, table[lower])):
            fig.add_trace(
                go.Bar(
                    name=stage,
                    x=part["metric"],
                    y=part[stage],
                    legendgroup=stage,
                    showlegend=row == 1,
                    marker_color=_COLOURS[i % len(_COLOURS)],
                ),
                row=row,
                col=1,
            )
    fig.update_layout(barmode="group", title="Evaluation by training stage", height=800)
    return fig


_COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3")


def stage_columns(table: pd.DataFrame) -> list[str]:
    """The stage columns of a comparison table, in order (not metric, better, delta_*)."""
    return [c for c in table.columns if c not in ("metric", "better") and not c.startswith("delta_")]


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
            ax.bar(xs, part[stage].astype(float), width, label=stage, color=_COLOURS[i % len(_COLOURS)])
        ax.set_xticks(range(len(part)), part["metric"], rotation=30, ha="right", fontsize="small")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if row == 0:
            ax.legend(fontsize="small")
    fig.suptitle("Evaluation by training stage")
    fig.tight_layout()
    return fig
