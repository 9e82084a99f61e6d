"""``finetune``: tools (SFT) -> preference (DPO), starting from the last pretrain stage's model."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from xoron_pipelines.pipelines.training.pipeline import group_pipeline, last_model


def create_pipeline(**kwargs) -> Pipeline:
    return group_pipeline("finetune", last_model("pretrain"))
