"""Nodes of the stage template: initialise, train (one per kind), summarise.

Each ``train_*`` node takes the stage's starting model (``init_model``: the previous stage's
``<prev>.model``, or a fresh seeded model for the first pretrain stage), the tokenizer, its data,
``params:stage`` (the stage's entry of ``pretrain.stages`` / ``finetune.stages``) and the stage's
checkpoint store (``checkpoints``: ``<stage>.checkpoints``; None when called directly with
``checkpoint_dir`` set), prepares the data and hands over to the library's stage orchestrator
(:func:`xoron_pipelines.training.stage.run_stage`). It returns ``(model, summary)``: the trained
plain model (LoRA merged) and a JSON-able summary, and with ``with_adapter=True`` (the Kedro
node) also the stage's LoRA adapter (``<stage>.lora_adapter``; empty without LoRA). A stage with
``enabled: false`` returns its starting model unchanged, so the stages after it still work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from kedro.io import DatasetError

from xoron_pipelines.datasets.training_store import CheckpointStore, LoraAdapter
from xoron_pipelines.model import XoronForCausalLM
from xoron_pipelines.model.config import ModelParams
from xoron_pipelines.training import stage_data, token_files, user_data
from xoron_pipelines.training.dpo import make_dpo_loss_fn, make_reference
from xoron_pipelines.training.fingerprint import examples_fingerprint, tokens_fingerprint
from xoron_pipelines.training.schema import Kind, StageParams
from xoron_pipelines.training.stage import StageData, passthrough_summary, run_stage

log = logging.getLogger(__name__)


def _params(stage_params: Mapping[str, Any], kind: Kind) -> StageParams:
    return StageParams.model_validate(stage_params).check_kind(kind)


def initialise_model(model_params: Mapping[str, Any], stage_params: Mapping[str, Any]) -> XoronForCausalLM:
    """A freshly initialised model of ``params:model``, seeded with the stage's ``train.seed``."""
    model_p = ModelParams.model_validate(model_params)
    config = model_p.build()
    torch.manual_seed(StageParams.model_validate(stage_params).train.seed)
    model = XoronForCausalLM(config)
    log.info("initialised a %s model: %s", model_p.preset, model.num_parameters())
    return model


def _max_len(params: StageParams, model) -> int:
    return params.max_seq_len or int(model.config.max_position_embeddings)


def _train(
    stage: str,
    kind: Kind,
    model,
    tokenizer,
    params: StageParams,
    data: StageData | None,
    checkpoints: CheckpointStore | None,
    with_adapter: bool,
    extra_params: dict[str, Any] | None = None,
    on_log=None,
):
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"stage {stage}: the tokenizer has {len(tokenizer)} ids but the model only "
            f"{model.config.vocab_size} (set model.overrides.vocab_size >= {len(tokenizer)})"
        )
    if not params.enabled:
        log.info("stage %s is disabled: passing its starting model through", stage)
        out = model, passthrough_summary(stage, kind), LoraAdapter()
    else:
        out = run_stage(
            stage,
            kind,
            model,
            data,
            params,
            checkpoints=checkpoints,
            tokenizer=tokenizer,
            extra_params=extra_params,
            on_log=on_log,
        )
    return out if with_adapter else out[:2]


def train_causal_lm(
    init_model,
    tokenizer,
    train_data,
    val_data,
    packed_mixes,
    stage_params: Mapping[str, Any],
    checkpoints: CheckpointStore | None = None,
    *,
    stage: str,
    with_adapter: bool = False,
    on_log=None,
):
    """Causal-LM stage on packed shards: ``packed_train`` / ``packed_val``, or the stage mix
    ``packed_mixes[data_mix]`` when the stage names one. ``on_log(step, metrics)`` also receives
    the logged metrics (the ablation pipeline keeps the loss curves with it)."""
    params = _params(stage_params, "causal_lm")
    if not params.enabled:
        return _train(stage, "causal_lm", init_model, tokenizer, params, None, checkpoints, with_adapter)
    if params.token_files is not None:
        data = _token_files_data(params, init_model, tokenizer)
        return _train(stage, "causal_lm", init_model, tokenizer, params, data, checkpoints, with_adapter, on_log=on_log)
    if params.data_mix is not None:
        try:
            mix = packed_mixes[params.data_mix]
        except (KeyError, DatasetError) as exc:
            raise ValueError(f"stage {stage}: data_mix {params.data_mix!r}: {exc}") from None
        train_data, val_data = mix["train"], mix["val"]
    cfg = params.train
    source = stage_data.packed_source(train_data.path, cfg.batch_size, cfg.seed, params.max_samples)
    val_batch = params.eval.batch_size or cfg.batch_size  # a small corpus's val split may hold fewer rows: one batch
    val = stage_data.packed_source(val_data.path, val_batch, cfg.seed, shuffle=False, shrink_batch=True)
    if tokenizer is not None:
        stage_data.check_tokenizer_matches(
            stage, tokenizer, {"train": train_data, "val": val_data}, {"train": source, "val": val}
        )
    data = StageData(
        source,
        stage_data.lm_eval_fn(val, params.eval.max_batches),
        fingerprint=tokens_fingerprint([source, val], tokenizer),
        extra_summary={
            "unigram_entropy": stage_data.unigram_entropy(source),
            "train_rows": source.num_rows,
            "data_mix": params.data_mix,
        },
    )
    return _train(stage, "causal_lm", init_model, tokenizer, params, data, checkpoints, with_adapter, on_log=on_log)


def _token_files_data(params: StageParams, model, tokenizer) -> StageData:
    """Seed 001's .npy token files cut into rows of the model's sequence length
    (:mod:`~xoron_pipelines.training.token_files`); the packed shards are not read."""
    cfg, paths = params.train, params.token_files.paths()
    seq_len, vocab = int(model.config.max_position_embeddings), int(model.config.vocab_size)
    source = token_files.NpyTokenSource(
        token_files.npy_files(paths["train"]), seq_len, vocab, cfg.batch_size, cfg.seed, max_samples=params.max_samples
    )
    val = token_files.NpyTokenSource(
        token_files.npy_files(paths["val"]), seq_len, vocab, params.eval.batch_size or cfg.batch_size, cfg.seed, False
    )
    return StageData(
        source,
        stage_data.lm_eval_fn(val, params.eval.max_batches),
        fingerprint=token_files.npy_fingerprint([source, val], tokenizer),
        extra_summary={
            "unigram_entropy": token_files.unigram_entropy(source),
            "train_rows": source.num_rows,
            "token_files": {k: str(v) for k, v in paths.items()},
        },
    )


def _example_sources(train: list, val: list, params, pad_id: int):
    """Shuffled training batches and in-order validation batches of padded examples."""
    cfg = params.train
    source = stage_data.example_source(train, cfg.batch_size, pad_id, cfg.seed)
    val_batch = min(params.eval.batch_size or cfg.batch_size, len(val))
    return source, stage_data.example_source(val, val_batch, pad_id, cfg.seed, shuffle=False)


def _chat_data(stage: str, kind: Kind, params: StageParams, init_model, tokenizer, synth_raw):
    """Examples of a chat stage's sources, split (weights applied), and the data's report."""
    cfg = params.train
    data = user_data.load_chat_data(
        stage,
        kind,
        params.sources,
        synth_raw,
        tokenizer,
        _max_len(params, init_model),
        cfg.seed,
        params.loss_weights,
    )
    train, val = stage_data.chat_split(data, params.sources, params.eval.val_fraction, params.max_samples, cfg.seed)
    fingerprint = examples_fingerprint(data.examples, tokenizer, extra=data.source_of)
    return train, val, data, fingerprint


def train_sft(
    init_model,
    tokenizer,
    synth_raw: Mapping[str, Any],
    stage_params: Mapping[str, Any],
    checkpoints: CheckpointStore | None = None,
    *,
    stage: str,
    with_adapter: bool = False,
):
    """SFT stage: chat-template conversations of its ``sources`` (synth partitions of
    ``synth_raw`` and / or user datasets the node reads itself: :mod:`~xoron_pipelines.training.user_data`),
    loss on assistant tokens, block weights. Quarantine counts go to the summary (``data``) and
    the stage's MLflow parameters (``data.*``)."""
    params = _params(stage_params, "sft")
    if not params.enabled:
        return _train(stage, "sft", init_model, tokenizer, params, None, checkpoints, with_adapter)
    train, val, chat, fingerprint = _chat_data(stage, "sft", params, init_model, tokenizer, synth_raw)
    source, val_source = _example_sources(train, val, params, tokenizer.pad_token_id)
    data = StageData(
        source,
        stage_data.lm_eval_fn(val_source, params.eval.max_batches),
        fingerprint=fingerprint,
        extra_summary={"train_examples": len(train), "val_examples": len(val), "data": chat.report()},
    )
    return _train(stage, "sft", init_model, tokenizer, params, data, checkpoints, with_adapter, chat.tracking_params())


def train_dpo(
    init_model,
    tokenizer,
    synth_raw: Mapping[str, Any],
    stage_params: Mapping[str, Any],
    checkpoints: CheckpointStore | None = None,
    *,
    stage: str,
    with_adapter: bool = False,
):
    """DPO stage against a frozen copy of the starting model on the chosen / rejected pairs of its
    ``sources`` (as :func:`train_sft`'s)."""
    params = _params(stage_params, "dpo")
    if not params.enabled:
        return _train(stage, "dpo", init_model, tokenizer, params, None, checkpoints, with_adapter)
    train, val, chat, fingerprint = _chat_data(stage, "dpo", params, init_model, tokenizer, synth_raw)
    reference = make_reference(init_model)
    source, val_source = _example_sources(train, val, params, tokenizer.pad_token_id)
    data = StageData(
        source,
        stage_data.dpo_eval_fn(val_source, reference, params.beta, params.eval.max_batches),
        loss_fn=make_dpo_loss_fn(reference, params.beta),
        fingerprint=fingerprint,
        extra_summary={"train_pairs": len(train), "val_pairs": len(val), "data": chat.report()},
    )
    return _train(stage, "dpo", init_model, tokenizer, params, data, checkpoints, with_adapter, chat.tracking_params())


SUMMARY_COLUMNS = [
    "stage",
    "kind",
    "enabled",
    "steps",
    "tokens_seen",
    "train_loss",
    "eval_loss",
    "unigram_entropy",
    "eval_reward_accuracies",
    "eval_pref_implicit_reward_accuracy",
    "eval_pref_reference_margin_accuracy",
    "tokens_per_s",
    "wall_s",
]


def summarise_stages(*summaries: Mapping[str, Any]) -> pd.DataFrame:
    """One row per stage (the columns of :data:`SUMMARY_COLUMNS` present), also logged as a table."""
    table = pd.DataFrame([{k: s.get(k) for k in SUMMARY_COLUMNS} for s in summaries])
    table = table.dropna(axis=1, how="all")
    log.info("training summary:\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return table


__all__ = ["initialise_model", "summarise_stages", "train_causal_lm", "train_dpo", "train_sft"]
