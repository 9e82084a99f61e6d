"""``multimodal``: stages ``image`` -> ``video`` -> ``audio`` after the finetune group's ``tools``.

``initialise_multimodal`` wraps ``tools.model`` with the mode's encoders, projectors and fusion
layers; each stage (namespace ``<stage>``, like the text stages: ``kedro run --namespaces image``)
trains on ``media_<stage>`` (``train_<stage>``) and is evaluated on its held-out rows
(``evaluate_<stage>``), writing ``<stage>.model``, ``<stage>.train_summary``,
``<stage>.evaluation`` and checkpoints in ``<stage>.checkpoints``. The DAG always holds the three
stages (a pipeline is built before the parameters are read); ``multimodal.mode`` decides which
train, the others pass their model through (``text``: all three).
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline, pipeline

from .nodes import evaluate_modality, initialise_multimodal, summarise_multimodal, train_modality
from .params import MULTIMODAL_STAGES


def _for_stage(func, stage: str):
    return update_wrapper(partial(func, stage=stage), func)


def stage_pipeline(stage: str, init_from: str) -> Pipeline:
    media = f"media_{stage}"
    nodes = [
        Node(
            _for_stage(train_modality, stage),
            ["init_model", "tokenizer", media, "params:multimodal", "checkpoints"],
            ["model", "train_summary"],
            name=f"train_{stage}",
        ),
        Node(
            _for_stage(evaluate_modality, stage),
            ["model", "tokenizer", media, "params:multimodal", "train_summary"],
            "evaluation",
            name=f"evaluate_{stage}",
        ),
    ]
    return pipeline(
        Pipeline(nodes),
        namespace=stage,
        inputs={"init_model": init_from, "tokenizer": "tokenizer", media: media},
        parameters={"params:multimodal": "params:multimodal"},
    )


def create_pipeline(**kwargs) -> Pipeline:
    nodes = [
        Node(
            initialise_multimodal,
            ["tools.model", "tokenizer", "params:multimodal"],
            "multimodal_init_model",
            name="initialise_multimodal",
        )
    ]
    previous = "multimodal_init_model"
    stages = []
    for stage in MULTIMODAL_STAGES:
        stages.append(stage_pipeline(stage, previous))
        previous = f"{stage}.model"
    summary = Node(
        summarise_multimodal,
        [f"{s}.evaluation" for s in MULTIMODAL_STAGES],
        "multimodal_summary",
        name="summarise_multimodal",
    )
    return Pipeline([Pipeline(nodes), *stages, summary], tags=["multimodal"])
