"""Export node: the source stage's model to every requested format (see
:mod:`xoron_pipelines.export.bundle`), returned as the catalog's ``export_*`` datasets."""

from __future__ import annotations

from typing import Any, Mapping

from xoron_pipelines.export.bundle import FORMAT_DIRS, export_model

from .params import STAGES, Params

#: the node's outputs, in the order Kedro saves them: every format before the manifest
OUTPUTS = [*(f"export_{name}" for name in FORMAT_DIRS.values()), "export_manifest", "export_metrics"]


def export_stage(stage_models, tokenizer, packed_val, params: Mapping[str, Any], *train_summaries: Mapping[str, Any]
                 ) -> tuple[Any, ...]:
    """Exports ``stage_models[params.source]`` (only that stage's model is loaded).
    ``train_summaries`` are every stage's ``<stage>.train_summary`` in :data:`STAGES` order; the
    source stage's goes into the model card and says where its LoRA adapter is. Returns the
    values of :data:`OUTPUTS`."""
    p = Params.model_validate(params)
    summary = dict(zip(STAGES, train_summaries)).get(p.source)
    manifest, metrics, artefacts = export_model(stage_models[p.source], tokenizer, packed_val, summary, p)
    return (*(artefacts[name] for name in FORMAT_DIRS.values()), manifest, metrics)
