"""The comparison library: loss-curve points from logged metrics, the table and its Markdown, the chart."""

from __future__ import annotations

import pytest

from xoron_pipelines.evaluation.ablation import (
    COLUMNS,
    comparison_markdown,
    comparison_table,
    curve,
    loss_curves_figure,
)


def _result(name: str, loss: float) -> dict:
    return {
        "variant": name,
        "model": "xoron",
        "total_params": 1_680_512,
        "active_params": 1_680_512,
        "tokens": 2048,
        "steps": 2,
        "final_train_loss": loss,
        "final_val_loss": loss + 0.5,
        "bits_per_byte": 1.25,
        "tokens_per_byte": 0.3,
        "wall_s": 3.5,
        "curve": [{"step": 1.0, "loss": loss + 1}, {"step": 2.0, "loss": loss}, {"step": 2.0, "eval_loss": loss + 0.5}],
    }


def test_curve_keeps_the_loss_points_of_the_logged_metrics():
    history = [
        {"step": 1, "loss": 3.0, "lr": 1e-3, "grad_norm": 1.0},
        {"step": 2, "eval_loss": 2.5, "eval_perplexity": 12.2},
        {"step": 2, "final_eval_loss": 2.4},
        {"step": 3, "loss": None},
    ]
    assert curve(history) == [{"step": 1.0, "loss": 3.0}, {"step": 2.0, "eval_loss": 2.5}]


def test_table_rows_follow_the_results_and_a_variant_twice_is_an_error():
    table = comparison_table([_result("a", 2.0), _result("b", 3.0)])
    assert list(table.columns) == COLUMNS and table["variant"].tolist() == ["a", "b"]
    markdown = comparison_markdown(table).splitlines()
    assert len(markdown) == 4 and markdown[2].startswith("| a | xoron | 1,680,512 | 1,680,512 | 2,048 | 2 | 2.0000")
    with pytest.raises(ValueError, match="the same variant twice"):
        comparison_table([_result("a", 2.0), _result("a", 3.0)])


def test_the_chart_overlays_every_variant_against_tokens():
    fig = loss_curves_figure([_result("a", 2.0), _result("b", 3.0)])
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["a", "a (val)", "b", "b (val)"]
    assert list(ax.lines[0].get_xdata()) == [1024.0, 2048.0]  # steps x tokens per step
