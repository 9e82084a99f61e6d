"""``export_harness``: the evaluation's lm-evaluation-harness adapter on the exported ``hf/``
directory (``export_manifest`` names it), after ``export`` in the default run.

A pipeline of its own (parameters: ``evaluation.harness``) so that ``--pipeline export`` and
``--pipeline evaluation`` each keep their inputs; run it alone with
``kedro run --pipeline export_harness`` on an earlier export. Writes ``evaluation_harness_export``
(data/08_reporting/evaluation/export/harness.json) and ``evaluation_harness_metrics_export``
(MLflow ``evaluation.export.harness/<task>/<metric>``); the figures match the source stage's
``evaluation_harness_<stage>``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from xoron_pipelines.pipelines.evaluation.nodes import evaluate_export_harness


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate_export_harness,
                inputs=["export_manifest", "packed_val", "params:evaluation"],
                outputs=["evaluation_harness_export", "evaluation_harness_metrics_export"],
                name="harness_on_export",
            )
        ],
        tags=["export_harness", "evaluation"],
    )
