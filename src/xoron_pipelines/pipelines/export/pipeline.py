"""``export`` pipeline: the source stage's model -> HF directory, GGUF, ONNX (+ MLflow registry).

The model comes from ``export_source_model``, the ``data/06_models/<stage>`` directory of the
stage named by the runtime parameter ``export.source`` (default ``preference``, the final
stage); ``kedro run --pipeline export --params export.source=code`` exports another stage (the
node checks that the loaded model is the one ``params:export`` names).

Every stage's ``<stage>.train_summary`` is an input too: it puts the node after training in the
DAG of the default ``kedro run`` (``export_source_model`` is another name for a model directory
that training writes, so Kedro could not see that dependency otherwise), and the source stage's
summary goes into the model card.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import export_stage
from .params import STAGES


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_stage,
                inputs=["export_source_model", "tokenizer", "packed_val", "params:export",
                        *(f"{stage}.train_summary" for stage in STAGES)],
                outputs=["export_manifest", "export_metrics"],
                name="export_model",
                tags=["export"],
            )
        ]
    )
