"""``export`` pipeline: the source stage's model -> HF directory, GGUF, ONNX, LoRA adapter (+ MLflow registry).

Inputs: the stage models (``stage_models``, a lazy view of every ``<stage>.model`` directory
that loads only the stage named by ``export.source``: the stage is chosen at run time, so the
node cannot name one ``<stage>.model``, and loading all four would need all four trained and in
memory), the tokenizer, ``packed_val`` (ONNX int8 figures), every stage's
``<stage>.train_summary`` (training writes it after ``<stage>.model``, so it orders the node after
training in the default ``kedro run``; the source stage's summary goes into the model card) and
every stage's ``<stage>.lora_adapter`` (the source stage's one is the ``lora`` format; empty when
it trained without LoRA). Like the summaries, all are inputs because the stage is picked at run time.

Outputs: ``export_hf``, ``export_gguf``, ``export_onnx``, ``export_lora_adapter``
(:class:`~xoron_pipelines.datasets.export.ExportDirectoryDataset`, under ``export.output_dir``),
then ``export_manifest`` and ``export_metrics``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import OUTPUTS, export_stage
from .params import STAGES


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_stage,
                inputs=[
                    "stage_models",
                    "tokenizer",
                    "packed_val",
                    "params:export",
                    *(f"{stage}.train_summary" for stage in STAGES),
                    *(f"{stage}.lora_adapter" for stage in STAGES),
                ],
                outputs=OUTPUTS,
                name="export_model",
                tags=["export"],
            )
        ]
    )
