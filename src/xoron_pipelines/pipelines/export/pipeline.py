"""``export`` pipeline: the source stage's model -> HF directory, GGUF, ONNX (+ MLflow registry).

The model is the ``data/06_models/<stage>`` directory of the stage named by ``export.source``
(default ``preference``, the final stage), read through ``stage_models``, which loads a stage
only when asked.

Every stage's ``<stage>.train_summary`` is an input too: it puts the node after training in the
DAG of the default ``kedro run`` (``stage_models`` is another name for the model directories
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
                inputs=["stage_models", "tokenizer", "packed_val", "params:export",
                        *(f"{stage}.train_summary" for stage in STAGES)],
                outputs=["export_manifest", "export_metrics"],
                name="export_model",
                tags=["export"],
            )
        ]
    )
