"""Nodes of the ablation pipeline: per variant initialise -> train -> evaluate; then compare.

Training is the causal-LM stage node of the training template
(:func:`xoron_pipelines.pipelines.training.nodes.train_causal_lm`, i.e. the one stage
orchestrator ``run_stage``) with the variant's merged settings; its MLflow run is nested under the
``kedro run`` run and named after the variant.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from kedro.io import DatasetError

from xoron_pipelines.datasets.training_store import CheckpointStore
from xoron_pipelines.evaluation.ablation import (
    comparison_markdown,
    comparison_table,
    curve,
    loss_curves_figure,
    score_validation,
)
from xoron_pipelines.model import XoronForCausalLM
from xoron_pipelines.model.baseline import build_baseline, parameter_counts
from xoron_pipelines.pipelines.training.nodes import train_causal_lm
from xoron_pipelines.training.schema import StageParams

from .params import Params

log = logging.getLogger(__name__)


def initialise_variant(
    ablation: Mapping[str, Any],
    pretrain: Mapping[str, Any],
    model: Mapping[str, Any],
    *,
    variant: str,
    built: tuple[str, ...],
) -> tuple[torch.nn.Module, StageParams]:
    """The variant's fresh model (ours, or the matched baseline; seeded with its ``train.seed``)
    and its merged stage settings. ``built``: the variant names the DAG was built with; the
    parameters must name the same (a list changed with ``--params`` would not be run)."""
    params = Params.model_validate(ablation)
    if tuple(params.names()) != tuple(built):
        raise ValueError(
            f"ablation.variants {params.names()} differ from the variants this pipeline was built with "
            f"{list(built)}: the pipeline reads them from conf/<env>/parameters_ablation.yml when it is "
            "created, so --params cannot change the list; edit the file instead"
        )
    stage = params.stage_params(variant, pretrain)
    spec = params.variant(variant)
    config = params.model_params(variant, model).build()
    torch.manual_seed(stage.train.seed)
    net = build_baseline(spec.baseline, config) if spec.baseline else XoronForCausalLM(config)
    counts = parameter_counts(net)
    log.info(
        "ablation variant %s: %s, %s parameters (%s active per token)",
        variant,
        spec.baseline or f"xoron {params.model_params(variant, model).preset}",
        f"{counts['total']:,}",
        f"{counts['active_per_token']:,}",
    )
    return net, stage


def train_variant(
    init_model,
    tokenizer,
    packed_train,
    packed_val,
    packed_mixes,
    stage: StageParams,
    checkpoints: CheckpointStore | None = None,
    *,
    variant: str,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the variant as a causal-LM stage named ``variant``; the summary holds its loss curve."""
    history: list[dict[str, float]] = []
    model, summary = train_causal_lm(
        init_model,
        tokenizer,
        packed_train,
        packed_val,
        packed_mixes,
        stage,
        checkpoints,
        stage=variant,
        on_log=lambda step, metrics: history.append({"step": step, **metrics}),
    )
    if not history and summary.get("resumed_from"):
        log.warning(
            "ablation variant %s: its finished checkpoint %s was reused, so no loss curve was logged in this "
            "run (set ablation.train.resume_from_checkpoint: never to train it again)",
            variant,
            summary["resumed_from"],
        )
    return model, {**summary, "curve": curve(history)}


def evaluate_variant(
    model,
    tokenizer,
    packed_val,
    packed_mixes,
    stage: StageParams,
    ablation: Mapping[str, Any],
    summary: Mapping[str, Any],
    *,
    variant: str,
) -> dict[str, Any]:
    """The variant's row of the comparison: parameter counts, tokens, final train / val loss,
    bits per byte on its validation packing, and its loss curve."""
    params = Params.model_validate(ablation)
    stage = StageParams.model_validate(stage)
    if stage.data_mix is None:
        val = packed_val
    else:
        try:
            val = packed_mixes[stage.data_mix]["val"]
        except (KeyError, DatasetError) as exc:
            raise ValueError(f"ablation variant {variant}: data_mix {stage.data_mix!r}: {exc}") from None
    counts = parameter_counts(model)
    spec = params.variant(variant)
    with torch.no_grad():
        scores = score_validation(model, tokenizer, val, params.eval_rows, params.eval_batch_size)
    return {
        "variant": variant,
        "model": spec.baseline or getattr(model.config, "model_type", type(model).__name__),
        "total_params": counts["total"],
        "active_params": counts["active_per_token"],
        "tokens": summary.get("tokens_seen"),
        "steps": summary.get("steps"),
        "final_train_loss": summary.get("train_loss"),
        **scores,
        "wall_s": summary.get("wall_s"),
        "data_mix": stage.data_mix,
        "mlflow_run_id": summary.get("mlflow_run_id"),
        "curve": summary.get("curve", []),
    }


def compare_variants(*results: Mapping[str, Any]) -> tuple[pd.DataFrame, str, list[dict[str, Any]], Any]:
    """The comparison table (CSV), its Markdown, all results (JSON) and the loss-curve chart."""
    table = comparison_table(results)
    log.info("ablation:\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return table, comparison_markdown(table), [dict(r) for r in results], loss_curves_figure(results)


__all__ = ["compare_variants", "evaluate_variant", "initialise_variant", "train_variant"]
