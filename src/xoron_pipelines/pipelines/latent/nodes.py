"""Nodes of the ``latent`` pipeline: build the latent model around the decoder, train the four
stages (each in its own nested MLflow run), hand the final model off and generate examples."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from xoron_pipelines import tracking
from xoron_pipelines.datasets.training_store import CheckpointStore
from xoron_pipelines.device import resolve_device
from xoron_pipelines.latent.cache_build import raw_texts
from xoron_pipelines.latent.data import (
    RowBatches,
    Rows,
    cache_indices,
    cache_rows,
    cached_embeddings_usable,
    stage_rows,
    stage_tensors,
)
from xoron_pipelines.latent.inference import artifact, build_model, generate
from xoron_pipelines.latent.model import LatentModel
from xoron_pipelines.latent.sources import pair_source
from xoron_pipelines.latent.stages import stage_spec, train_stage, trainable_parts
from xoron_pipelines.pipelines.embedding_cache.params import Params as CacheParams

from .params import Params

log = logging.getLogger(__name__)


def build_latent_model(decoder: Any, cache_params: dict, params: dict) -> LatentModel:
    """A fresh latent model around the decoder (encoder: ``latent.encoder_model`` or the
    embedding cache's encoder); the decoder's tokenizer and paths travel with it."""
    p, ec = Params.model_validate(params), CacheParams.model_validate(cache_params)
    model = build_model(p, p.encoder_model or ec.encoder_model, decoder.model)
    model.decoder_bundle = decoder
    return model.to(resolve_device(p.device, "latent.device"))


def stage_data(data: Any, subset: str, p: Params) -> Any:
    """The input a subset was cached from: the pairs of ``dataset_name`` (``data`` is then the
    catalog's ``synth_raw``) or the pretraining text itself."""
    return pair_source(data, p.dataset_name, p.pair_splits()) if subset == "pairs" else data


def stage_batches(model: LatentModel, rows: Rows, spec: Any, p: Params, encoder_trains: bool) -> RowBatches:
    """The stage's batch source over ``rows`` (its own batch size, seeded order)."""
    tensors = stage_tensors(
        model,
        rows,
        kind=spec.kind,
        identity=spec.identity,
        encoder_trains=encoder_trains,
        tokenizer=model.decoder_bundle.tokenizer,
        max_target_len=p.max_target_len,
    )
    # worker-made batches go to a GPU through pinned memory (the engine copies them non_blocking)
    pin = next(model.parameters()).device.type == "cuda" and all(t.device.type == "cpu" for t in tensors.values())
    return RowBatches(
        tensors, p.stage_value(spec.name, "batch_size"), p.seed, p.num_workers, p.prefetch_factor, pin_memory=pin
    )


def _skip(model: LatentModel, stage: str, p: Params, reason: str):
    log.info("latent/%s skipped: %s", stage, reason)
    summary = {"stage": stage, "skipped": reason}
    return (
        model,
        artifact(model, _weights_file(stage, p), model.decoder_bundle, {"stage": stage, "summary": summary}),
        summary,
    )


def _weights_file(stage: str, p: Params) -> str:
    return p.pretrain_best_model_filename if stage.startswith("pretrain") else p.finetune_best_model_filename


def train_latent_stage(
    model: LatentModel,
    cache: Any,
    data: Any,
    cache_params: dict,
    params: dict,
    checkpoints: CheckpointStore | None = None,
    *,
    stage: str,
):
    """One stage (see :mod:`xoron_pipelines.latent.stages`); returns the model (trained in
    place), its weights artefact and a summary with the validation losses before and after and,
    for an adapter stage, the prefix ablation on the validation rows (``prefix_ablation``: own,
    shuffled and zero-latent prefix; MLflow ``ablation_*``).
    ``checkpoints`` is the stage's ``latent_<stage>.checkpoints`` store (``latent.checkpoint_dir``,
    when set, replaces its root)."""
    p, ec = Params.model_validate(params), CacheParams.model_validate(cache_params)
    order = p.stages()
    if stage not in order:
        return _skip(
            model,
            stage,
            p,
            f"not selected (pipeline_mode={p.pipeline_mode}, run_pretraining="
            f"{p.run_pretraining}, run_finetuning={p.run_finetuning})",
        )
    spec = stage_spec(stage, p)
    parts = trainable_parts(spec, p, first_stage=stage == order[0])
    if not parts:
        return _skip(model, stage, p, f"training_phase={p.training_phase} trains nothing this stage uses")
    use_emb = cached_embeddings_usable(cache, model, p, "encoder" in parts)
    texts = raw_texts(stage_data(data, spec.data, p), spec.data, ec, cache_indices(cache))
    train_rows, val_rows = stage_rows(cache, texts, p, stage, use_emb)
    train_b, val_b = (stage_batches(model, rows, spec, p, "encoder" in parts) for rows in (train_rows, val_rows))
    with tracking.stage_run(f"latent.{stage}", tags={"xoron.pipeline": "latent"}) as run:
        tracking.log_params(
            {
                "stage": stage,
                "trains": ",".join(sorted(parts)),
                "rows": len(train_rows),
                "cached_embeddings": use_emb,
                **p.model_dump(),
            }
        )
        recorder = tracking.StageRecorder(enabled=run is not None)
        summary = train_stage(model, spec, p, parts, train_b, val_b, on_log=recorder.log, checkpoints=checkpoints)
        recorder.log(
            summary["steps"],
            {
                **{f"before_{k}": v for k, v in summary["before"].items()},
                **{f"after_{k}": v for k, v in summary["after"].items()},
                **{f"ablation_{k}": v for k, v in (summary["prefix_ablation"] or {}).items()},
            },
        )
        summary.update(
            cached_embeddings=use_emb,
            val_rows=len(val_rows),
            mlflow_run_id=run.info.run_id if run else None,
            row_sources=dict(Counter(str(o) for o in train_rows.origin)),
        )
    log.info(
        "latent/%s: %d steps, val loss %.4f -> %.4f",
        stage,
        summary["steps"],
        summary["before"]["eval_loss"],
        summary["after"]["eval_loss"],
    )
    if summary["prefix_ablation"]:
        ab = summary["prefix_ablation"]
        log.info(
            "latent/%s: held-out decoder loss with its latent prefix %.4f, a shuffled prefix %.4f, "
            "a zero-latent prefix %.4f",
            stage,
            ab["prefix_loss"],
            ab["shuffled_prefix_loss"],
            ab["zero_latent_prefix_loss"],
        )
    return (
        model,
        artifact(model, _weights_file(stage, p), model.decoder_bundle, {"stage": stage, "summary": summary}),
        summary,
    )


def handoff(model: LatentModel, params: dict, *summaries: dict):
    """The final latent model (after the last stage that ran) under handoff_best_model_filename."""
    p = Params.model_validate(params)
    ran = [s["stage"] for s in summaries if "skipped" not in s]
    return artifact(model, p.handoff_best_model_filename, model.decoder_bundle, {"stages_trained": ran}), list(
        summaries
    )


def generate_examples(model: LatentModel, cache: Any, data: Any, cache_params: dict, params: dict) -> list[dict]:
    """Text -> latents -> text for the first ``inference_examples`` sources of the test split
    (when the pairs' source has one), else of the validation split (else of train)."""
    p, ec = Params.model_validate(params), CacheParams.model_validate(cache_params)
    if p.inference_examples == 0:
        return []
    split = next((s for s in (cache.test, cache.val) if s is not None and len(s)), cache.train)
    rows = cache_rows(split, raw_texts(stage_data(data, "pairs", p), "pairs", ec), False)
    rows = rows.take(list(range(min(p.inference_examples, len(rows)))))
    if not len(rows):
        return []
    outputs = generate(
        model,
        model.decoder_bundle.tokenizer,
        rows.sources,
        max_generation_length=p.max_generation_length,
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        seed=p.seed,
    )
    return [{"source": s, "target": t, "generated": g} for s, t, g in zip(rows.sources, rows.targets, outputs)]
