"""Per-stage figures with n, interval and chance; the comparison table, its markdown and chart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xoron_pipelines.evaluation import report, stats


def _fig(items, chance=0.25):
    return report.figure([items], "mean", float(np.mean(items)), chance)


def _columns():
    rng = np.random.default_rng(0)
    untrained = (rng.random(200) < 0.25).astype(float)
    language = untrained.copy()
    language[np.flatnonzero(untrained == 0)[:60]] = 1.0  # +0.30: a real change
    code = language.copy()
    code[np.flatnonzero(language == 0)[:2]] = 1.0  # +0.01: inside the interval
    ppl = {"items": {"nll": [2.0, 3.0, 4.0], "tokens": [1, 2, 2], "bytes": [4, 6, 5]}}
    ppl |= {"perplexity": math.exp(9 / 5), "bits_per_byte": 9 / (math.log(2) * 15)}
    ppl["chance"] = {"perplexity": 50.0, "bits_per_byte": 4.0}
    by = {}
    for name, items in (("untrained", untrained), ("language", language), ("code", code)):
        tasks = {"program_output": {"acc": float(items.mean()), "n": 200.0, "chance": 0.25}}
        records = [{"task": "program_output", "acc": float(v)} for v in items]
        by[name] = report.figures(tasks, records, {"packed_val": ppl})
    return by


def test_every_figure_has_n_interval_chance_and_items():
    by = _columns()
    f = by["language"]["program_output.acc"]
    assert f["n"] == 200 and f["chance"] == 0.25 and len(f["items"][0]) == 200
    assert (f["lo"], f["hi"]) == stats.wilson_interval(sum(f["items"][0]), 200)
    p = by["language"]["ppl_packed_val.perplexity"]
    assert p["n"] == 3 and p["chance"] == 50.0 and p["kind"] == "perplexity" and p["lo"] <= p["value"] <= p["hi"]
    with pytest.raises(ValueError, match="item records"):
        report.figures({"t": {"acc": 0.5, "n": 3.0}}, [{"task": "t", "acc": 1.0}], {})


def test_table_shows_untrained_first_and_marks_changes_inside_the_interval():
    by = _columns()
    columns = ["untrained", "language", "code"]
    table = report.comparison_table(by, columns)
    assert list(table.columns)[:3] == ["metric", "n", "chance"]
    assert {"untrained", "untrained_lo", "untrained_hi", "delta_language_sig", "delta_code_lo"} <= set(table.columns)
    assert "delta_untrained" not in table.columns
    row = table.set_index("metric").loc["program_output.acc"]
    assert row["delta_language"] == pytest.approx(0.30) and row["delta_language_sig"]
    assert row["delta_code"] == pytest.approx(0.01) and not row["delta_code_sig"]
    assert row["n"] == 200 and row["chance"] == 0.25
    ppl = table.set_index("metric").loc["ppl_packed_val.perplexity"]
    assert ppl["better"] == "lower" and ppl["delta_code"] == 0 and not ppl["delta_code_sig"]
    md = report.to_markdown(table, columns)
    line = next(ln for ln in md.splitlines() if ln.startswith("| program_output.acc"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == ["program_output.acc", "200", "0.25"]
    assert cells[4] == "+0.3" and cells[6] == "+0.01 n.s."  # Δ language significant, Δ code not
    assert cells[3].startswith(f"{row['untrained']:.3g} [")
    assert "paired-bootstrap" in md


def test_figure_has_error_bars_per_column_and_chance_markers():
    by = _columns()
    columns = ["untrained", "language"]
    table = report.comparison_table(by, columns)
    fig = report.comparison_figure(table, columns)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["untrained", "untrained", "language", "language"]
    acc = table.set_index("metric").loc["program_output.acc"]
    first = bars[2]
    assert first.x[0] == "program_output.acc (n=200)"
    assert first.error_y.array[0] == pytest.approx(acc["language_hi"] - acc["language"])
    assert {t.name for t in fig.data if t.type == "scatter"} == {"chance"}
    assert fig.to_json()


def test_flatten_drops_counts_and_chance():
    flat = report.flatten({"t": {"acc": 0.5, "n": 40.0, "chance": 0.25}, "ppl_x": {"perplexity": 3.0, "tokens": 9}})
    assert flat == {"t.acc": 0.5, "ppl_x.perplexity": 3.0}
