"""Comparison table across stages and its plotly figure."""

from __future__ import annotations

import math

from xoron_pipelines.evaluation import report


def test_table_has_a_column_per_stage_and_the_change_each_stage_made():
    by_stage = {
        "language": {"mmlu.acc": 0.25, "ppl_packed_val.perplexity": 40.0},
        "code": {"mmlu.acc": 0.30, "ppl_packed_val.perplexity": 35.0},
        "tools": {"mmlu.acc": 0.45},
    }
    table = report.comparison_table(by_stage, ["language", "code", "tools"])
    assert list(table.columns) == ["metric", "language", "code", "tools", "delta_code", "delta_tools", "better"]
    row = table.set_index("metric").loc["mmlu.acc"]
    assert math.isclose(row["delta_code"], 0.05) and math.isclose(row["delta_tools"], 0.15)
    ppl = table.set_index("metric").loc["ppl_packed_val.perplexity"]
    assert ppl["delta_code"] == -5.0 and math.isnan(ppl["tools"]) and ppl["better"] == "lower"
    md = report.to_markdown(table)
    assert md.splitlines()[0].startswith("| metric | language | code | tools |") and "| mmlu.acc | 0.25 | 0.3 |" in md


def test_flatten_drops_counts():
    flat = report.flatten({"mmlu": {"acc": 0.5, "n": 40.0}, "ppl_x": {"perplexity": 3.0, "tokens": 9}})
    assert flat == {"mmlu.acc": 0.5, "ppl_x.perplexity": 3.0}


def test_figure_has_one_bar_trace_per_stage_and_panel():
    by_stage = {s: {"mmlu.acc": 0.1 * i, "ppl_x.perplexity": 10.0 - i} for i, s in enumerate(["language", "code"])}
    table = report.comparison_table(by_stage, ["language", "code"])
    fig = report.comparison_figure(table, ["language", "code"])
    names = [(t.name, tuple(t.x)) for t in fig.data]
    assert names == [
        ("language", ("mmlu.acc",)),
        ("language", ("ppl_x.perplexity",)),
        ("code", ("mmlu.acc",)),
        ("code", ("ppl_x.perplexity",)),
    ]
    assert fig.to_json()  # serialisable for plotly.JSONDataset
