"""Nodes of the ``multimodal`` pipeline: initialise the multimodal model, train one stage per
modality, evaluate it on the held-out split.

Every ``train_<stage>`` node goes through the text stages' orchestrator
(:func:`xoron_pipelines.training.stage.run_stage`): LoRA and freezing, seeded training with a
progress bar, crash-safe checkpoints in ``<stage>.checkpoints`` and exact resume (the fingerprint
holds the stage's knobs, the model config, the starting weights and the media's content), one nested
MLflow run per stage with its loss curve. A stage whose modality the ``mode`` does not train (or
``enabled: false``) passes its starting model through. ``evaluate_<stage>`` scores the saved
stage model (:mod:`xoron_pipelines.evaluation.multimodal`) and logs its figures, a sample grid
(image / video) or WAV clips with transcripts (audio) into the stage's MLflow run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from xoron_pipelines import tracking
from xoron_pipelines.data.media import encode_audio
from xoron_pipelines.data.multiscale import sample_image_size, sample_video_shape
from xoron_pipelines.datasets.training_store import CheckpointStore
from xoron_pipelines.evaluation.multimodal import evaluate_media, flat_metrics, sample_grid, transcripts_json
from xoron_pipelines.model.audio import greedy_decode
from xoron_pipelines.model.multimodal import XoronMultimodalModel, media_prompt_ids
from xoron_pipelines.training.fingerprint import fingerprint
from xoron_pipelines.training.multimodal import (
    TASKS,
    ItemTokenizer,
    MediaBatchSource,
    decode_media,
    eval_shape,
    items_of,
    media_digest,
    split_rows,
)
from xoron_pipelines.training.stage import StageData, passthrough_summary, run_stage

from .params import MULTIMODAL_STAGES, Params

log = logging.getLogger(__name__)

KIND = "multimodal"


def _params(params: Mapping[str, Any] | Params) -> Params:
    return params if isinstance(params, Params) else Params.model_validate(params)


def initialise_multimodal(llm, tokenizer, params: Mapping[str, Any]):
    """The ``tools`` model wrapped with the encoders, projectors and fusion layers of the mode's
    modalities (fresh, seeded with the first training stage's ``train.seed``); the LLM itself
    when the mode is ``text``."""
    p = _params(params)
    if not p.modalities():
        log.info("multimodal.mode is text: no multimodal stage trains; the tools model passes through")
        return llm
    first = next(s for s in MULTIMODAL_STAGES if s in p.modalities())
    torch.manual_seed(p.stages[first].train.seed)
    model = XoronMultimodalModel(p.multimodal_config(), llm, tokenizer)
    total = sum(q.numel() for q in model.parameters())
    log.info("multimodal model for %s: %d parameters (LLM %d)", p.modalities(), total, llm.num_parameters())
    return model


class MultimodalLoss:
    """The engine's ``loss_fn``: the model's loss (LM loss on the targets, plus ``asr_loss_weight``
    x the CTC loss on audio batches); ``last_metrics`` adds both terms to the logged metrics."""

    def __init__(self) -> None:
        self.last_metrics: dict[str, float] | None = None

    def __call__(self, model, batch: dict[str, Any]) -> torch.Tensor:
        out = model(**batch)
        self.last_metrics = {
            name: float(value.detach())
            for name in ("lm_loss", "asr_loss")
            if (value := getattr(out, name, None)) is not None
        }
        return out.loss


def _eval_fn(source: MediaBatchSource, max_batches: int | None):
    """Mean held-out loss (``eval_loss``) over the first ``max_batches`` batches of ``source``."""

    def evaluate(model) -> dict[str, float]:
        n = len(source) if max_batches is None else min(len(source), max_batches)
        device = next(model.parameters()).device
        losses = []
        with torch.no_grad():
            for i in range(n):
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in source.batch(0, i).items()}
                losses.append(float(model(**batch).loss))
        return {"eval_loss": sum(losses) / len(losses)}

    return evaluate


def _sampler(stage: str, p: Params):
    """The micro-batch media-shape draw of ``stage`` (multi-scale), None for audio."""
    cfg = p.multi_scale
    if stage == "image":
        return lambda step, total, rng: sample_image_size(cfg, step, total, rng)
    if stage == "video":
        return lambda step, total, rng: sample_video_shape(cfg, step, total, rng)
    return None


def _encoder(tokenizer, model, stage: str) -> ItemTokenizer:
    return ItemTokenizer(tokenizer, stage, media_prompt_ids(tokenizer, stage, model.config.num_tokens(stage)))


def ctc_decoder(model):
    """``decode(audio, lengths) -> [str]``: greedy CTC transcripts of the audio encoder's head."""

    @torch.no_grad()
    def decode(audio: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        out, _ = model.encode("audio", audio, lengths)
        return greedy_decode(out.extras["ctc_logits"], out.extras["frame_lengths"])

    return decode


def _check_model(model, stage: str) -> None:
    if not isinstance(model, XoronMultimodalModel) or stage not in model.config.modalities:
        raise ValueError(
            f"stage {stage}: the starting model has no {stage} encoder "
            f"(modalities: {getattr(getattr(model, 'config', None), 'modalities', None)})"
        )


def train_modality(
    init_model,
    tokenizer,
    media_table,
    params: Mapping[str, Any],
    checkpoints: CheckpointStore | None = None,
    *,
    stage: str,
):
    """Train stage ``stage`` (a modality) on the ``train`` rows of ``media_<stage>``; returns
    (model, summary). See the module doc."""
    p = _params(params)
    sp = p.stages[stage]
    if not p.trains(stage):
        why = "disabled" if stage in p.modalities() else f"mode {p.mode!r}"
        log.info("multimodal stage %s does not train (%s): passing its starting model through", stage, why)
        return init_model, {**passthrough_summary(stage, KIND), "reason": why}
    _check_model(init_model, stage)
    cfg = sp.train
    tasks = list(sp.tasks or TASKS[stage])
    rows = split_rows(media_table, stage, "train")
    items = items_of(rows, stage, tasks)
    if sp.max_samples is not None:
        items = items[: sp.max_samples]  # rows come shuffled from synth; the batches shuffle again
    heldout = split_rows(media_table, stage, "heldout")
    enc = _encoder(tokenizer, init_model, stage)
    media, val_media = decode_media(rows), decode_media(heldout)
    source = MediaBatchSource(items, media, enc, cfg.batch_size, cfg.seed, _sampler(stage, p), max_len=sp.max_seq_len)
    source.total_micro_steps = cfg.total_steps(len(source)) * cfg.gradient_accumulation_steps
    shape = eval_shape(stage, p.multi_scale)
    val_items = items_of(heldout, stage, tasks)
    val_batch = min(sp.eval.batch_size or cfg.batch_size, len(val_items))
    val = MediaBatchSource(
        val_items, val_media, enc, val_batch, cfg.seed, (lambda *_: shape) if shape else None, shuffle=False
    )
    data = StageData(
        source,
        _eval_fn(val, sp.eval.max_batches),
        loss_fn=MultimodalLoss(),
        fingerprint=fingerprint(
            media=media_digest(rows),
            tasks=tasks,
            multi_scale=p.multi_scale.model_dump(mode="json"),
            slot=enc.slot,
            tokenizer=tokenizer.backend_tokenizer.to_str(),
        ),
        extra_summary={"train_items": len(items), "train_rows": len(rows), "tasks": tasks, "modality": stage},
    )
    # the stage's model directory is logged below (run_stage's log_model needs save_pretrained)
    run_params = sp.model_copy(update={"tracking": sp.tracking.model_copy(update={"log_model": False})})
    model, summary, _ = run_stage(
        stage,
        KIND,
        init_model,
        data,
        run_params,
        checkpoints=checkpoints,
        tokenizer=tokenizer,
        extra_params={"multimodal": {"mode": p.mode, "model": p.multimodal_config().model_dump(mode="json")}},
    )
    if sp.tracking.enabled and sp.tracking.log_model and summary.get("mlflow_run_id"):
        _log_model(summary["mlflow_run_id"], model, tokenizer, stage)
    return model, summary


def _log_model(run_id: str, model, tokenizer, stage: str) -> None:
    from mlflow.tracking import MlflowClient

    from xoron_pipelines.atomic import default_permissions
    from xoron_pipelines.export.multimodal import save_multimodal

    with tempfile.TemporaryDirectory(prefix="xoron-artifact-") as tmp:
        save_multimodal(model, tokenizer, Path(tmp) / "model", stage=stage)
        default_permissions(tmp, recursive=True)
        MlflowClient().log_artifacts(run_id, str(Path(tmp) / "model"), "model")


def evaluate_modality(
    model, tokenizer, media_table, params: Mapping[str, Any], train_summary: Mapping[str, Any], *, stage: str
):
    """Held-out figures of stage ``stage`` (:func:`~xoron_pipelines.evaluation.multimodal.evaluate_media`),
    also logged into the stage's MLflow run with a sample grid PNG (image / video) or WAV clips
    and their transcripts (audio). ``{"enabled": false}`` when the stage did not train."""
    p = _params(params)
    if not p.trains(stage) or not p.evaluation.enabled:
        return {"stage": stage, "enabled": False}
    _check_model(model, stage)
    ev = p.evaluation
    rows = split_rows(media_table, stage, "heldout")
    if ev.max_rows is not None:
        rows = rows.iloc[: ev.max_rows].reset_index(drop=True)
    media = decode_media(rows)
    enc = _encoder(tokenizer, model, stage)
    metrics, samples = evaluate_media(
        model,
        enc,
        rows,
        media,
        eval_shape(stage, p.multi_scale),
        batch_size=ev.batch_size,
        caption_choices=ev.caption_choices,
        max_new_tokens=ev.max_new_tokens,
        seed=ev.seed,
        ctc_decode=ctc_decoder(model) if stage == "audio" else None,
    )
    log.info("multimodal stage %s held-out:\n%s", stage, json.dumps(metrics, indent=1))
    run_id = train_summary.get("mlflow_run_id")
    if run_id and p.stages[stage].tracking.enabled:
        _log_evaluation(run_id, stage, metrics, samples, media, ev, train_summary.get("steps") or 0)
    return {"stage": stage, "enabled": True, **metrics, "samples": samples[:12]}  # a few, to read


def _log_evaluation(run_id: str, stage: str, metrics, samples, media, ev, step: int) -> None:
    from mlflow.tracking import MlflowClient

    tracking.log_metrics_to_run(run_id, flat_metrics(metrics), step=step)
    client = MlflowClient()
    client.log_dict(run_id, metrics, "evaluation/metrics.json")
    if stage in ("image", "video") and samples and ev.grid_items:
        fig = sample_grid(media, samples, f"{stage}: held-out VQA", ev.grid_items)
        try:
            client.log_figure(run_id, fig, "evaluation/sample_grid.png")
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)
    if stage == "audio" and samples and ev.audio_clips:
        with tempfile.TemporaryDirectory(prefix="xoron-audio-") as tmp:
            for s in samples[: ev.audio_clips]:
                (Path(tmp) / f"{s['id']}.wav").write_bytes(encode_audio(media[s["row"]]))
            (Path(tmp) / "transcripts.json").write_text(transcripts_json(samples[: ev.audio_clips]))
            client.log_artifacts(run_id, tmp, "evaluation/audio")


def summarise_multimodal(*evaluations: Mapping[str, Any]):
    """One row per stage: its headline held-out figures beside the blind baseline and chance."""
    import pandas as pd

    rows = []
    for ev in evaluations:
        row: dict[str, Any] = {"stage": ev["stage"], "enabled": ev["enabled"]}
        for task in ("vqa", "caption"):
            if task in ev:
                row[f"{task}_accuracy"] = ev[task]["with_media"]["accuracy"]
                row[f"{task}_blind"] = ev[task]["blind"]["accuracy"]
                row[f"{task}_chance"] = ev[task]["chance"]
                row[f"{task}_n"] = ev[task]["with_media"]["n"]
        if "asr" in ev:
            for name, fig in ev["asr"].items():
                row[f"wer_{name}"] = fig["wer"]
            row["asr_n"] = ev["asr"]["llm"]["n"]
        rows.append(row)
    table = pd.DataFrame(rows)
    log.info("multimodal summary:\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return table
