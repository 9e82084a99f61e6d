"""``export`` pipeline: the source stage's model -> HF directory, GGUF, ONNX (+ MLflow registry).

The model comes from ``export.source_model``, the ``data/06_models/<stage>`` directory of the
stage named by the runtime parameter ``export.source`` (default ``preference``, the final
stage); ``kedro run --pipeline export --params export.source=code`` exports another stage (the
node checks that the loaded model is the one ``params:export`` names).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import export_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_model,
                inputs=["export.source_model", "tokenizer", "packed_val", "export.source_summary", "params:export"],
                outputs=["export_manifest", "export_metrics"],
                name="export_model",
                tags=["export"],
            )
        ]
    )
