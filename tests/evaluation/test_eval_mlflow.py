"""``log_to_training_run``: a stage's evaluation metrics into its training run's MLflow run."""

from __future__ import annotations

import logging

import pytest

from tests.helpers import fresh_tracking_store
from xoron_pipelines.pipelines.evaluation.nodes import log_to_training_run

NODES_LOG = "xoron_pipelines.pipelines.evaluation.nodes"


@pytest.fixture
def tracking(tmp_path):
    """A fresh tracking store as the current one (the previous URI restored afterwards)."""
    with fresh_tracking_store(tmp_path) as client:
        yield client


def test_metrics_go_to_the_summary_run(tracking):
    run = tracking.create_run("0", run_name="language")
    metrics = {"ppl_packed_val.perplexity": 12.5, "mmlu.acc": 0.25, "humaneval.pass_at_1": 0.0}
    assert log_to_training_run(metrics, {"mlflow_run_id": run.info.run_id, "steps": 3}, "language")
    logged = tracking.get_run(run.info.run_id).data.metrics
    assert logged == {f"eval/{k}": v for k, v in metrics.items()}
    history = tracking.get_metric_history(run.info.run_id, "eval/mmlu.acc")
    assert [(m.step, m.value) for m in history] == [(0, 0.25)]


@pytest.mark.parametrize(
    "summary", [{"mlflow_run_id": "0123456789abcdef0123456789abcdef"}, {"mlflow_run_id": None}, None]
)
def test_unknown_or_missing_run_only_warns(tracking, caplog, summary):
    other = tracking.create_run("0", run_name="other")
    with caplog.at_level(logging.WARNING, logger=NODES_LOG):
        assert not log_to_training_run({"mmlu.acc": 0.5}, summary, "tools")
    warnings = [r for r in caplog.records if r.name == NODES_LOG and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "tools" in warnings[0].getMessage()
    assert tracking.get_run(other.info.run_id).data.metrics == {}
