"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from xoron_pipelines.pipelines.data_processing.pipeline import create_pipeline as data_processing_pipeline
from xoron_pipelines.training.schema import STAGES as TRAINING_STAGES

# The default `kedro run`: every stage from raw corpus to exported model, in this order.
# Pipelines that do not exist yet are skipped, so the list is the roadmap too.
DEFAULT_ORDER = ("synth", "data_processing", "pretrain", "finetune", "evaluation", "export", "export_harness")

__all__ = ["DEFAULT_ORDER", "TRAINING_STAGES", "data_processing_outputs", "register_pipelines"]
# TRAINING_STAGES: group -> its stages, in training order (the run summary lists them so)


def data_processing_outputs() -> set[str]:
    """The datasets the ``data_processing`` pipeline writes (what the data lock of
    :class:`~xoron_pipelines.hooks.DataLockHook` protects), whichever pipelines a run loads."""
    return set(data_processing_pipeline().all_outputs())


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT_ORDER if name in pipelines), Pipeline([]))
    return pipelines
