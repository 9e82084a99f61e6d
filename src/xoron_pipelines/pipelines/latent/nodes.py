"""Nodes of the ``latent`` pipeline: build the latent model around the decoder, train the four
stages (each in its own nested MLflow run), hand the final model off and generate examples."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from xoron_pipelines import tracking
from xoron_pipelines.latent.data import RowBatches, Rows, cache_rows, cap_rows, stage_tensors
from xoron_pipelines.latent.encoder import resolve_encoder_dir
from xoron_pipelines.latent.inference import artifact, build_model, generate
from xoron_pipelines.latent.model import LatentModel
from xoron_pipelines.latent.stages import stage_spec, trainable_parts, train_stage
from xoron_pipelines.pipelines.embedding_cache.nodes import _records, pair_rows
from xoron_pipelines.pipelines.embedding_cache.params import Params as CacheParams

from .params import Params

log = logging.getLogger(__name__)


def build_latent_model(decoder: Any, cache_params: dict, params: dict) -> LatentModel:
    """A fresh latent model around the decoder (encoder: ``latent.encoder_model`` or the
    embedding cache's encoder); the decoder's tokenizer and paths travel with it."""
    p, ec = Params.model_validate(params), CacheParams.model_validate(cache_params)
    model = build_model(p, p.encoder_model or ec.encoder_model, decoder.model)
    model.decoder_bundle = decoder
    return model.to(resolve_device(p.device))


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("latent.device is cuda but no CUDA device is available; use auto or cpu")
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device if device != "auto" else "cpu")


def raw_texts(data: Any, subset: str, ec: CacheParams, wanted: set[int] | None = None) -> dict[int, tuple]:
    """Raw row index -> (source, target, ledger source) as the embedding cache indexed them
    (only the indices in ``wanted`` when given: the pretraining ledger can be large)."""
    if subset == "pairs":
        rows = ((r.index, (r.source, r.target, None)) for r in pair_rows(data, ec))
    else:
        field = ec.pretrain_text_field
        rows = ((i, (rec.get(field), rec.get(field), rec.get("source")))
                for i, rec in enumerate(_records(data, [field, "status", "source"])))
    return {i: row for i, row in rows if wanted is None or i in wanted}


def cache_indices(cache: Any) -> set[int]:
    """Raw row indices held by a cache subset (both splits)."""
    return {int(i) for split in cache.splits.values() for i in split.read(["index"]).column("index").to_pylist()}


def cached_embeddings_usable(cache: Any, model: LatentModel, p: Params, encoder_trains: bool) -> bool:
    """The cached embeddings stand in for the encoder when preprocessing is on, the cache was
    made for training by this encoder (same files, mean pooling, normalisation and length limit)
    and the encoder has not been trained; otherwise the texts are encoded on the fly."""
    meta = cache.manifest
    enc = meta["encoder"]
    same_encoder = (Path(enc["path"]).resolve() == resolve_encoder_dir(model.cfg.encoder_model).resolve()
                    and meta["embedding"]["normalize"] == model.encoder.normalize
                    and enc["max_length"] == model.encoder.max_len)
    return bool(p.run_preprocessing and meta.get("cache_use_embeddings_for_training", True) and same_encoder
                and meta["embedding"]["pooling"] == "mean" and not encoder_trains and not model.encoder_trained)


def stage_rows(cache: Any, texts: dict, p: Params, stage: str, use_emb: bool) -> tuple[Rows, Rows]:
    """Train and validation rows of a stage, with the per-source and total caps applied."""
    total = p.stage_value(stage, "max_samples")
    if stage.startswith("finetune") and p.max_train_samples is not None:
        total = min(total or p.max_train_samples, p.max_train_samples)
    caps = p.dataset_caps(stage) if stage.startswith("pretrain") else {}
    train = cap_rows(cache_rows(cache.train, texts, use_emb), caps, total)
    val = cap_rows(cache_rows(cache.val, texts, use_emb), caps, total)
    return train, val if len(val) else train


def stage_batches(model: LatentModel, rows: Rows, spec: Any, p: Params, encoder_trains: bool) -> RowBatches:
    """The stage's batch source over ``rows`` (its own batch size, seeded order)."""
    tensors = stage_tensors(model, rows, kind=spec.kind, identity=spec.identity, encoder_trains=encoder_trains,
                            tokenizer=model.decoder_bundle.tokenizer, max_target_len=p.max_target_len)
    return RowBatches(tensors, p.stage_value(spec.name, "batch_size"), p.seed)


def _skip(model: LatentModel, stage: str, p: Params, reason: str):
    log.info("latent/%s skipped: %s", stage, reason)
    summary = {"stage": stage, "skipped": reason}
    return model, artifact(model, _weights_file(stage, p), model.decoder_bundle, {"stage": stage, "summary": summary}), summary


def _weights_file(stage: str, p: Params) -> str:
    return p.pretrain_best_model_filename if stage.startswith("pretrain") else p.finetune_best_model_filename


def train_latent_stage(model: LatentModel, cache: Any, data: Any, cache_params: dict, params: dict, *, stage: str):
    """One stage (see :mod:`xoron_pipelines.latent.stages`); returns the model (trained in
    place), its weights artefact and a summary with the validation losses before and after."""
    p, ec = Params.model_validate(params), CacheParams.model_validate(cache_params)
    order = p.stages()
    if stage not in order:
        return _skip(model, stage, p, f"not selected (pipeline_mode={p.pipeline_mode}, run_pretraining="
                                      f"{p.run_pretraining}, run_finetuning={p.run_finetuning})")
    spec = stage_spec(stage, p)
    parts = trainable_parts(spec, p, first_stage=stage == order[0])
    if not parts:
        return _skip(model, stage, p, f"training_phase={p.training_phase} trains nothing this stage uses")
    use_emb = cached_embeddings_usable(cache, model, p, "encoder" in parts)
    train_rows, val_rows = stage_rows(cache, raw_texts(data, spec.data, ec, cache_indices(cache)), p, stage, use_emb)
    train_b, val_b = (stage_batches(model, rows, spec, p, "encoder" in parts) for rows in (train_rows, val_rows))
    with tracking.stage_run(f"latent.{stage}", tags={"xoron.pipeline": "latent"}) as run:
        tracking.log_params({"stage": stage, "trains": ",".join(sorted(parts)), "rows": len(train_rows),
                             "cached_embeddings": use_emb, **p.model_dump()})
        recorder = tracking.StageRecorder(enabled=run is not None)
        summary = train_stage(model, spec, p, parts, train_b, val_b, on_log=recorder.log)
        recorder.log(summary["steps"], {**{f"before_{k}": v for k, v in summary["before"].items()},
                                        **{f"after_{k}": v for k, v in summary["after"].items()}})
        summary.update(cached_embeddings=use_emb, val_rows=len(val_rows), mlflow_run_id=run.info.run_id if run else None,
                       row_sources=dict(Counter(str(o) for o in train_rows.origin)))
    log.info("latent/%s: %d steps, val loss %.4f -> %.4f", stage, summary["steps"], summary["before"]["eval_loss"],
             summary["after"]["eval_loss"])
    return model, artifact(model, _weights_file(stage, p), model.decoder_bundle, {"stage": stage, "summary": summary}), summary


def handoff(model: LatentModel, params: dict, *summaries: dict):
    """The final latent model (after the last stage that ran) under handoff_best_model_filename."""
    p = Params.model_validate(params)
    ran = [s["stage"] for s in summaries if "skipped" not in s]
    return artifact(model, p.handoff_best_model_filename, model.decoder_bundle, {"stages_trained": ran}), list(summaries)


def generate_examples(model: LatentModel, cache: Any, data: Any, cache_params: dict, params: dict) -> list[dict]:
    """Text -> latents -> text for the first ``inference_examples`` validation sources."""
    p, ec = Params.model_validate(params), CacheParams.model_validate(cache_params)
    if p.inference_examples == 0:
        return []
    rows = cache_rows(cache.val if len(cache.val) else cache.train, raw_texts(data, "pairs", ec), False)
    rows = rows.take(list(range(min(p.inference_examples, len(rows)))))
    if not len(rows):
        return []
    outputs = generate(model, model.decoder_bundle.tokenizer, rows.sources, max_generation_length=p.max_generation_length,
                       do_sample=p.do_sample, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=p.seed)
    return [{"source": s, "target": t, "generated": g} for s, t, g in zip(rows.sources, rows.targets, outputs)]
