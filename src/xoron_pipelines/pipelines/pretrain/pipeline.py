"""``pretrain``: language -> code on the packed shards; language starts from a fresh model."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from xoron_pipelines.pipelines.training.pipeline import group_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    return group_pipeline("pretrain", None)
