"""Export node: the source stage's model to every requested format (see
:mod:`xoron_pipelines.export.bundle`), returned as the catalog's ``export_*`` datasets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xoron_pipelines.export.bundle import FORMAT_DIRS, export_model

from .params import STAGES, Params

#: the node's outputs, in the order Kedro saves them: every format before the manifest
OUTPUTS = [*(f"export_{name}" for name in FORMAT_DIRS.values()), "export_manifest", "export_metrics"]


def export_stage(
    stage_models, tokenizer, packed_val, packing_manifest, params: Mapping[str, Any], *per_stage: Any
) -> tuple[Any, ...]:
    """Exports ``stage_models[params.source]`` (only that stage's model is loaded).
    ``packing_manifest``: data_processing's, the model card's data summary (sources, documents,
    tokens). ``per_stage``: every stage's ``<stage>.train_summary`` in :data:`STAGES` order, then
    every stage's ``<stage>.lora_adapter``
    (:class:`~xoron_pipelines.datasets.training_store.LoraAdapter`) in the same order; the
    summaries of the stages up to the source make the card's stage table (the source's also its
    details) and the source's adapter is the ``lora`` format. Returns the values of :data:`OUTPUTS`."""
    if len(per_stage) != 2 * len(STAGES):
        raise ValueError(
            f"export_stage takes a train summary and a LoRA adapter per stage {list(STAGES)}: "
            f"{2 * len(STAGES)} inputs after params, got {len(per_stage)}"
        )
    p = Params.model_validate(params)
    summaries = dict(zip(STAGES, per_stage[: len(STAGES)]))
    adapters = dict(zip(STAGES, per_stage[len(STAGES) :]))
    upto = {stage: summaries[stage] for stage in STAGES[: STAGES.index(p.source) + 1]}
    manifest, metrics, artefacts = export_model(
        stage_models[p.source],
        tokenizer,
        packed_val,
        summaries[p.source],
        p,
        adapters[p.source],
        data=packing_manifest,
        stages=upto,
    )
    return (*(artefacts[name] for name in FORMAT_DIRS.values()), manifest, metrics)
