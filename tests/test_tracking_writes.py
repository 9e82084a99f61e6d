"""The tracking module's write functions (every MLflow write of the project goes through
xoron_pipelines.tracking): metrics into an earlier run, artefacts and tags of the active run."""

from __future__ import annotations

import mlflow
import pytest

from tests.helpers import fresh_tracking_store
from xoron_pipelines import tracking


@pytest.fixture
def client(tmp_path):
    with fresh_tracking_store(tmp_path) as store:
        yield store


def test_log_metrics_to_run_batches_past_the_per_call_limit(client):
    run = client.create_run("0", run_name="language")
    metrics = {f"eval/m{i:04d}": float(i) for i in range(1203)}
    assert tracking.log_metrics_to_run(run.info.run_id, metrics, step=4) == 1203
    assert client.get_run(run.info.run_id).data.metrics == metrics
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/m1202")] == [(4, 1202.0)]


def test_log_metrics_to_an_unknown_run_raises_before_writing(client):
    other = client.create_run("0", run_name="other")
    with pytest.raises(tracking.RunNotFound, match="0123456789abcdef0123456789abcdef") as err:
        tracking.log_metrics_to_run("0123456789abcdef0123456789abcdef", {"eval/x": 1.0})
    assert err.value.error_code
    assert client.get_run(other.info.run_id).data.metrics == {}


def test_active_run_tags_and_dict_artefact(client, tmp_path):
    assert tracking.active_run() is None and not tracking.tag_active_run({"a": "1"})
    with mlflow.start_run(experiment_id="0") as run:
        assert tracking.active_run().info.run_id == run.info.run_id
        assert tracking.tag_active_run({"xoron.stage": "code"})
        tracking.log_dict({"steps": 3, "loss": 1.5}, "summary.json")
    assert client.get_run(run.info.run_id).data.tags["xoron.stage"] == "code"
    path = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
    assert mlflow.artifacts.load_dict(path) == {"steps": 3, "loss": 1.5}
