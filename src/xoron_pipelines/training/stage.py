"""The one stage orchestrator: freeze / LoRA, the engine, tracking, merge, summary.

Every training stage goes through :func:`run_stage`: the Kedro ``pretrain`` / ``finetune`` nodes
(kinds ``causal_lm``, ``sft``, ``dpo``) and the four ``latent`` stages
(:func:`xoron_pipelines.latent.stages.train_stage`, kind ``latent``). It takes the stage's
starting model and its prepared data (batch source, eval function, optional custom loss) and:

1. applies LoRA (``lora.enabled``, adapters drawn with ``train.seed``) and the freeze / unfreeze
   patterns;
2. opens the stage's nested MLflow run, logs the flattened stage parameters, the model config
   and parameter counts;
3. trains with :func:`xoron_pipelines.training.train` in the node's process or, when
   ``distributed`` asks for more than one process, with
   :func:`xoron_pipelines.training.distributed.distributed_train` (the node launches the workers;
   see below); every ``logging_steps`` (shortened to give a loss curve at least 10 points:
   :func:`logging_interval`) the engine's metrics (loss, lr, grad norm, tokens/s) plus
   the MFU estimate, per-layer MoE expert load and PEER hot-expert counts go to MLflow with their
   step; evaluations likewise;
4. evaluates once more at the end, merges LoRA into the base weights, logs the loss-curve and
   expert-load PNGs, the tokenizer and the final model as artefacts;
5. returns the plain trained model and a JSON-able summary.

Device (:class:`Runtime`, one INFO line and the MLflow params ``runtime.*``): a single-process
stage moves its model to ``device`` (:func:`xoron_pipelines.device.resolve_device`; ``auto`` = the
first CUDA GPU, else the CPU) before LoRA and the optimizer exist, trains there (precision /
compile ``auto`` resolved on that device by the engine, the model config's ``kernels: auto`` =
Triton on CUDA), evaluates there, and returns the model on the device it came on (the catalog's
models: the CPU, so what is saved is portable). ``device`` is not part of the fingerprint: a run
started on a GPU resumes on the CPU and back (checkpoints are device-neutral). The MFU
denominator is ``tracking.peak_flops`` (``auto``: :func:`xoron_pipelines.device.peak_flops`).

The stage loss is :meth:`~xoron_pipelines.training.losses.LossWeights.combine` of the stage's
losses by modality: today the language-model term alone (``llm_loss_weight`` x the LM / SFT / DPO
loss; :func:`stage_objective`). PEER expert usage (``peer_log_expert_usage``, every
``peer_log_freq`` steps of the model config, seed 002) is logged by :class:`ModelStats`.

Checkpoints go to ``<root>/<stage>/<fingerprint>/`` (``<root>``: the stage's checkpoint store from
the catalog, ``<stage>.checkpoints``, or ``checkpoint_dir`` when set: :func:`checkpoint_root`); the
LoRA adapter is returned (:class:`~xoron_pipelines.datasets.training_store.LoraAdapter`, the
node's ``<stage>.lora_adapter``, which export reads; the summary's ``lora_adapter`` names that
dataset, None when the stage trained no adapter or on a node other than node 0). The fingerprint
(:func:`stage_fingerprint`) hashes the content of what decides the trained result -- the stage
parameters that change it, the model config (no path in it), the starting weights and the data --
so re-running the same command resumes (or, when finished, returns at once), also after
re-packing byte-identical data or moving the project, while a change of any of those starts
afresh in a new directory. Left out (:data:`RESULT_NEUTRAL_STAGE_FIELDS`, and the engine's
:data:`~xoron_pipelines.training.fingerprint.RESULT_NEUTRAL_TRAIN_FIELDS`): ``distributed`` (a run
may resume with another number of processes), ``tracking``, ``checkpoint_dir``,
``keep_configurations``, ``device``, ``eval.max_batches`` / ``eval.batch_size`` (unless early stopping
depends on evaluations), ``train.save_steps`` / ``keep_last_k`` / ``async_checkpointing`` /
``logging_steps`` / ``resume_from_checkpoint``, and the duration ``max_steps`` / ``num_epochs``:
raising it continues from the newest checkpoint (see :mod:`xoron_pipelines.training.engine`).
The ``keep_configurations`` most recently used configurations of a stage keep their checkpoints;
older ones are removed with a log line
(:func:`~xoron_pipelines.training.checkpoint.configuration_dir`).

Scale-out (``distributed.nproc_per_node`` x ``distributed.nnodes`` > 1): the starting model is
saved (safetensors) as ``<fingerprint>/start_model.node<node_rank>`` (one per node: no two nodes
write the same directory, and the start model need not be on shared storage) and every worker
rebuilds the stage's model from it with :class:`StageModelFactory` (load, LoRA, freezing; the
same seed, so the same adapters everywhere); ``train.batch_size`` is the global micro-batch,
split over the processes. Rank 0's metric history is replayed into the stage's MLflow run when
the workers are done, and the trained weights come back through the final checkpoint. On a node
other than node 0 (``node_rank > 0``, ``checkpoint_dir`` on storage all nodes share) the node
returns the same trained model, read from that checkpoint, logs nothing to MLflow, and its
summary says which node it is.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

from xoron_pipelines import tracking
from xoron_pipelines.datasets.model import XoronModelDataset
from xoron_pipelines.datasets.training_store import CheckpointStore, LoraAdapter
from xoron_pipelines.device import (
    device_name,
    peak_flops,
    resolve_compile,
    resolve_device,
    resolve_kernels,
    resolve_precision,
)
from xoron_pipelines.model.config import XoronConfig
from xoron_pipelines.model.params_count import count_parameters
from xoron_pipelines.model.placement import place_model, resolve_device_map
from xoron_pipelines.training import train
from xoron_pipelines.training.checkpoint import MODEL_FILE, configuration_dir, latest_valid_checkpoint
from xoron_pipelines.training.distributed import check_compatible, distributed_train
from xoron_pipelines.training.engine import LossFn, default_loss
from xoron_pipelines.training.fingerprint import fingerprint, model_config, train_settings, weights_digest
from xoron_pipelines.training.lora import apply_lora, lora_plus_param_groups, merge_lora
from xoron_pipelines.training.losses import LossWeights
from xoron_pipelines.training.reproducibility import seed_everything
from xoron_pipelines.training.schema import STAGES, Kind, StageParams

log = logging.getLogger(__name__)

#: experts per MoE layer up to which every expert's share is logged (above: summary statistics)
MAX_EXPERTS_LOGGED = 32


@dataclass
class StageData:
    """What a kind prepares for :func:`run_stage`."""

    source: Any  # a BatchSource
    eval_fn: Callable[[nn.Module], dict[str, float]]
    loss_fn: Callable | None = None
    fingerprint: str = ""  # identity of the data (for the checkpoint dir)
    extra_summary: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ the objective
@dataclass(frozen=True)
class StageObjective:
    """The engine's ``loss_fn`` of a stage: seed 000's modality-weighted sum
    (:meth:`LossWeights.combine`) of the stage's losses. Today one term exists, ``llm``: the
    language-model loss (the model's own next-token loss, or the kind's ``lm`` loss such as DPO's);
    the multimodal stages add theirs to :meth:`terms`. ``token_weighted``: the language loss is the
    engine's default, so micro-batches keep their token weighting (see
    :func:`xoron_pipelines.training.train`)."""

    weights: LossWeights
    lm: LossFn
    token_weighted: bool

    def terms(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unweighted loss of each modality on ``batch``."""
        return {"llm": self.lm(model, batch)}

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.weights.combine(self.terms(model, batch))

    @property
    def last_metrics(self) -> dict[str, float] | None:
        return getattr(self.lm, "last_metrics", None)


def stage_objective(model: nn.Module, weights: LossWeights | None, lm: LossFn | None = None) -> StageObjective:
    """The stage loss ``combine({"llm": lm})`` with ``weights`` (seed 000's defaults when None);
    ``lm`` None = the model's default LM loss."""
    return StageObjective(weights or LossWeights(), lm or default_loss(model), token_weighted=lm is None)


# ------------------------------------------------------------------------------ freezing
def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def apply_freeze(model: nn.Module, freeze: list[str], unfreeze: list[str]) -> int:
    """Freeze parameters matching a ``freeze`` pattern unless an ``unfreeze`` pattern matches too;
    returns the number of frozen tensors. Names are matched without peft's ``base_model.model.``
    prefix. A pattern matching no parameter is an error (a typo would silently do nothing)."""
    names = [(n, n.removeprefix("base_model.model."), p) for n, p in model.named_parameters()]
    for pattern in [*freeze, *unfreeze]:
        if not any(_matches(plain, pattern) for _, plain, _ in names):
            sample = ", ".join(plain for _, plain, _ in names[:6])
            raise ValueError(
                f"freeze/unfreeze pattern {pattern!r} matches no parameter (names look like: {sample}, ...)"
            )
    frozen = 0
    for _, plain, param in names:
        if any(_matches(plain, p) for p in freeze) and not any(_matches(plain, p) for p in unfreeze):
            param.requires_grad_(False)
            frozen += 1
    return frozen


# ------------------------------------------------------------------------------ fingerprints
#: StageParams fields outside the fingerprint (``eval`` only without early stopping)
RESULT_NEUTRAL_STAGE_FIELDS = frozenset({"distributed", "tracking", "checkpoint_dir", "keep_configurations", "device"})


def stage_fingerprint(params: StageParams, model: nn.Module, data_fingerprint: str) -> str:
    """Content fingerprint of a stage run (see the module docstring): the settings that change the
    result, the model config without paths, the starting weights, the data's content digest."""
    settings = params.model_dump(mode="json", exclude=set(RESULT_NEUTRAL_STAGE_FIELDS))
    settings["train"] = train_settings(settings["train"])
    if params.train.early_stopping_patience is None:
        settings["eval"] = {"val_fraction": params.eval.val_fraction}  # decides the sft / dpo split
    return fingerprint(
        params=settings, config=model_config(model.config), weights=weights_digest(model), data=data_fingerprint
    )


# ------------------------------------------------------------------------------ metrics
def _plain(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def moe_stats(model: nn.Module) -> dict[str, float]:
    """Per MoE layer the routed-token share of each expert (or max/min share for many experts)."""
    out: dict[str, float] = {}
    expert_load = getattr(_plain(model), "expert_load", None)
    if callable(expert_load):
        for layer, load in expert_load().items():
            load = load.detach().float().cpu()
            if load.sum() <= 0:
                continue
            if load.numel() <= MAX_EXPERTS_LOGGED:
                out.update({f"moe/layer{layer}/expert{j}": float(v) for j, v in enumerate(load)})
            out[f"moe/layer{layer}/max_over_mean"] = float(load.max() / load.mean())
            out[f"moe/layer{layer}/min_share"] = float(load.min())
    return out


def peer_stats(model: nn.Module) -> dict[str, float]:
    """Per PEER layer the hot-expert count and the fraction of experts ever used."""
    out: dict[str, float] = {}
    model = _plain(model)
    hot = getattr(model, "peer_hot_experts", None)
    if callable(hot):
        for layer, count in hot().items():
            out[f"peer/layer{layer}/hot_experts"] = float(count)
        for i, layer in enumerate(getattr(getattr(model, "model", None), "layers", [])):
            stats = getattr(layer.mlp, "usage_stats", None)
            if callable(stats):
                out[f"peer/layer{i}/active_fraction"] = float(stats()["active_fraction"])
    return out


class ModelStats:
    """The engine's ``stats_fn``: MoE expert load at every logging step; PEER usage (seed 002's
    ``log_expert_usage`` / ``log_freq``, the model config's ``peer_log_expert_usage`` /
    ``peer_log_freq``) only when enabled, at the first logging step at or after each multiple of
    ``peer_log_freq`` (exactly every ``peer_log_freq`` steps when that is a multiple of
    ``logging_steps``). Models without such a config log PEER usage at every logging step."""

    def __init__(self, config: Any = None) -> None:
        self.peer = bool(getattr(config, "peer_log_expert_usage", True))
        self.freq = int(getattr(config, "peer_log_freq", 1) or 1)
        self._next = self.freq

    def __call__(self, model: nn.Module, step: int | None = None) -> dict[str, float]:
        out = moe_stats(model)
        if self.peer and (step is None or step >= self._next):
            out.update(peer_stats(model))
            if step is not None:
                self._next = (step // self.freq + 1) * self.freq
        return out


def _trainable(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ------------------------------------------------------------------------------ the stage
def prepare_model(model: nn.Module, params: StageParams) -> tuple[nn.Module, int]:
    """The model the stage trains: LoRA adapters (drawn with ``train.seed``, identical in every
    process) and the freeze patterns applied; returns it and the number of frozen tensors. A model
    that wraps an LLM (``llm`` + ``merge_lora()``: the multimodal model) gets the adapters on its LLM."""
    if params.lora.enabled:
        seed_everything(params.train.seed)
    if params.lora.enabled and hasattr(model, "merge_lora") and isinstance(getattr(model, "llm", None), nn.Module):
        model.llm = apply_lora(model.llm, params.lora)
    else:
        model = apply_lora(model, params.lora)
    return model, apply_freeze(model, params.freeze, params.unfreeze)


@dataclass(frozen=True)
class StageModelFactory:
    """Picklable recipe of a stage's model for its worker processes: the starting model saved in
    ``start_dir`` (safetensors), then :func:`prepare_model`."""

    start_dir: str
    params: StageParams

    def __call__(self) -> nn.Module:
        return prepare_model(XoronModelDataset(self.start_dir).load(), self.params)[0]


def passthrough_summary(stage: str, kind: Kind) -> dict[str, Any]:
    return {"stage": stage, "kind": kind, "enabled": False, "steps": 0}


def start_model_dir(ckpt_dir: Path, node_rank: int) -> Path:
    """Where this node saves the starting model its workers load."""
    return ckpt_dir / f"start_model.node{node_rank}"


def _train_in_processes(
    model: nn.Module, data: StageData, params: StageParams, ckpt_dir: Path, stage: str, **engine: Any
):
    """Train in the node's process, or launch the workers of ``params.distributed``; returns
    ``(trained model, TrainResult or None)``: None on a node other than node 0."""
    dist = params.distributed
    device = params.device
    check_compatible(params.train, dist, device, key=f"stages.{stage}.distributed")
    if not dist.launches:
        placement = resolve_device_map(dist.device_map, model, key=f"stages.{stage}.distributed.device_map")
        if placement is not None:
            place_model(model, placement)
        return model, train(model, data.source, params.train, ckpt_dir=ckpt_dir, **engine)
    factory = StageModelFactory(str(start_model_dir(ckpt_dir, dist.node_rank)), params)
    out = distributed_train(factory, data.source, params.train, dist, ckpt_dir=ckpt_dir, device=device, **engine)
    if out is not None:
        return out
    last = latest_valid_checkpoint(ckpt_dir)  # node_rank > 0: node 0's workers wrote it (shared storage)
    if last is None:
        raise FileNotFoundError(
            f"stage {stage}: no checkpoint in {ckpt_dir} after training on node "
            f"{dist.node_rank}; checkpoint_dir must be on storage every node shares"
        )
    trained = factory()
    trained.load_state_dict(load_file(str(last / MODEL_FILE)))
    return trained, None


def checkpoint_root(stage: str, params: StageParams, store: CheckpointStore | None) -> Path:
    """Root of the stage's checkpoints (``<root>/<stage>/<fingerprint>``): the catalog's
    ``<stage>.checkpoints`` store, unless ``params.checkpoint_dir`` is set (the seed knob), which
    replaces it (logged). One of the two must be given."""
    if store is not None and store.stage != stage:
        raise ValueError(f"stage {stage}: the checkpoint store given is stage {store.stage!r}'s ({store.path})")
    if params.checkpoint_dir is not None:
        if store is not None and Path(params.checkpoint_dir) != store.root:
            log.info(
                "stage %s: checkpoint_dir %s replaces the catalog's %s.checkpoints (%s)",
                stage,
                params.checkpoint_dir,
                stage,
                store.root,
            )
        return Path(params.checkpoint_dir)
    if store is None:
        raise ValueError(
            f"stage {stage}: no checkpoint location: give the {stage}.checkpoints store or set checkpoint_dir"
        )
    return store.root


def device_key(stage: str) -> str:
    """The dotted parameter key of a stage's ``device`` (``pretrain.stages.language.device``)."""
    group = next((g for g, stages in STAGES.items() if stage in stages), None)
    return f"{group}.stages.{stage}.device" if group else f"{stage}.device"


@dataclass(frozen=True)
class Runtime:
    """Where and how a stage trains, resolved from its parameters and the machine: the device,
    the precision (``train.precision: auto``), torch.compile (``train.compile: auto``), the
    kernels (the model config's ``kernels``) and the MFU denominator (``tracking.peak_flops``)."""

    device: torch.device
    name: str
    precision: str
    compile: bool
    kernels: str
    peak_flops: float | None

    @classmethod
    def of(cls, stage: str, params: StageParams, config: Any) -> Runtime:
        device = resolve_device(params.device, device_key(stage))
        precision = resolve_precision(params.train.precision, device)
        peak = params.tracking.peak_flops
        return cls(
            device=device,
            name=device_name(device),
            precision=precision,
            compile=resolve_compile(params.train.compile, device),
            kernels=resolve_kernels(getattr(config, "kernels", None), device),
            peak_flops=peak_flops(device, precision, params.train.tf32) if peak == "auto" else float(peak),
        )

    def describe(self) -> str:
        return (
            f"device {self.name}, precision {self.precision}, compile {'on' if self.compile else 'off'}, "
            f"kernels {self.kernels}"
        )

    def params(self) -> dict[str, Any]:
        """The MLflow params (``runtime.*``)."""
        return {
            "device": self.name,
            "precision": self.precision,
            "compile": self.compile,
            "kernels": self.kernels,
            "peak_flops": self.peak_flops,
        }


#: fewest loss points a stage logs (every step when it has fewer steps)
MIN_LOSS_POINTS = 10


def logging_interval(logging_steps: int, total_steps: int) -> int:
    """The logging interval a stage trains with: ``min(logging_steps, ceil(total_steps / 10))``,
    so every stage's loss curve has at least :data:`MIN_LOSS_POINTS` points, or one per step when
    it has fewer steps (a stage of 4 steps with ``logging_steps: 5`` logs all 4)."""
    return max(1, min(logging_steps, math.ceil(total_steps / MIN_LOSS_POINTS)))


def with_logging_interval(params: StageParams, batches_per_epoch: int) -> StageParams:
    """``params`` with ``train.logging_steps`` set to :func:`logging_interval` of the stage's
    length (``logging_steps`` is not in the fingerprint: resuming is unaffected)."""
    cfg = params.train
    interval = logging_interval(cfg.logging_steps, cfg.total_steps(batches_per_epoch))
    if interval == cfg.logging_steps:
        return params
    return params.model_copy(update={"train": cfg.model_copy(update={"logging_steps": interval})})


def run_stage(
    stage: str,
    kind: str,
    model: nn.Module,
    data: StageData,
    params: StageParams,
    *,
    checkpoints: CheckpointStore | None = None,
    tokenizer=None,
    fingerprint: str | None = None,
    extra_params: dict[str, Any] | None = None,
    on_log: Callable[[int, dict], None] | None = None,
    desc: str | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any], LoraAdapter]:
    """Train ``model`` for one stage; returns (plain trained model, summary, LoRA adapter: empty
    when the stage trained none or on a node other than node 0). See the module doc.

    ``checkpoints``: the stage's checkpoint store (see :func:`checkpoint_root`);
    ``fingerprint``: the stage's identity when the caller computes it (the latent stages), else
    :func:`stage_fingerprint`. ``on_log(step, metrics)`` receives the metrics too (with or without
    tracking); ``desc`` names the progress bar (default: ``stage``).
    """
    params = with_logging_interval(params, len(data.source))
    cfg, dist = params.train, params.distributed
    fingerprint = fingerprint or stage_fingerprint(params, model, data.fingerprint)
    # node 0 alone prunes earlier configurations (the other nodes share its checkpoint_dir)
    ckpt_dir = configuration_dir(
        checkpoint_root(stage, params, checkpoints),
        stage,
        fingerprint,
        params.keep_configurations if dist.node_rank == 0 else None,
    )
    base = model
    config = getattr(base, "config", None)
    runtime = Runtime.of(stage, params, config)
    home = next((p.device for p in base.parameters()), torch.device("cpu"))  # where the model goes back
    if dist.launches:
        XoronModelDataset(str(start_model_dir(ckpt_dir, dist.node_rank))).save(base)  # what the workers start from
    elif getattr(base, "placement", None) is None:  # a placed model (multimodal use_model_parallel) stays put
        base.to(runtime.device)  # before LoRA and the optimizer: adapters and optimizer state on the device
    model, frozen = prepare_model(model, params)
    trainable, total = _trainable(model)
    if trainable == 0:
        raise ValueError(f"stage {stage}: the freeze patterns leave no trainable parameter")
    groups = None
    if params.lora.enabled and params.lora.use_lora_plus:
        groups = partial(
            lora_plus_param_groups,
            lr=cfg.learning_rate,
            ratio=params.lora.lora_plus_lr_ratio,
            weight_decay=cfg.weight_decay,
        )
    counts = count_parameters(config) if isinstance(config, XoronConfig) else None  # e.g. not a GPT-2 baseline
    active = counts["active_per_token"] if counts else None
    track = params.tracking.model_copy(update={"enabled": params.tracking.enabled and dist.node_rank == 0})
    recorder = tracking.StageRecorder(track.enabled)

    def log_metrics(step: int, metrics: dict[str, float]) -> None:
        metrics = {k.replace("rewards/", "train_reward_"): v for k, v in metrics.items()}
        if "tokens_per_s" in metrics and active and runtime.peak_flops:  # tokens of all processes, world_size devices
            metrics["mfu"] = 6.0 * active * metrics["tokens_per_s"] / (runtime.peak_flops * dist.world_size)
        recorder.log(step, metrics)
        if on_log is not None:
            on_log(step, metrics)

    with tracking.stage_run(
        stage,
        track.enabled,
        tags={"xoron.kind": kind, "xoron.fingerprint": fingerprint},
        system_metrics_interval=track.system_metrics_interval_s if track.system_metrics else None,
    ) as run:
        if track.enabled:
            model_info = {"trainable_params": trainable, "frozen_tensors": frozen}
            if counts:
                model_info.update(active_params=active, total_params=counts["total"], preset_config=config.to_dict())
            tracking.log_params(
                {
                    **params.model_dump(mode="json"),
                    "kind": kind,
                    "model": model_info,
                    "runtime": runtime.params(),
                    **(extra_params or {}),
                }
            )
        log.info("stage %s: %s", stage, runtime.describe())
        log.info(
            "stage %s (%s): %d of %d parameters train in %d process(es), checkpoints in %s",
            stage,
            kind,
            trainable,
            total,
            dist.world_size,
            ckpt_dir,
        )
        start = time.perf_counter()
        objective = stage_objective(model, params.loss_weights, data.loss_fn)
        model, result = _train_in_processes(
            model,
            data,
            params,
            ckpt_dir,
            stage,
            eval_fn=data.eval_fn if cfg.eval_steps else None,
            on_log=log_metrics,
            loss_fn=objective,
            param_groups=groups,
            stats_fn=ModelStats(config),
            desc=desc or stage,
            progress=progress,
        )
        wall = time.perf_counter() - start
        writes = isinstance(model, PeftModel) and dist.node_rank == 0  # node 0 alone publishes the adapter
        adapter = f"{stage}.lora_adapter" if writes else None
        adapter_files = LoraAdapter.of(model) if writes else LoraAdapter()
        model = model.merge_lora() if hasattr(model, "merge_lora") else merge_lora(model)
        model.eval()
        if result is None:
            model.to(home)
            return (
                model,
                {
                    "stage": stage,
                    "kind": kind,
                    "enabled": True,
                    "node_rank": dist.node_rank,
                    "note": "trained on several nodes; node 0 logs the metrics",
                    "fingerprint": fingerprint,
                    "lora_adapter": adapter,
                },
                adapter_files,
            )
        with torch.no_grad():
            final_eval = data.eval_fn(model)  # still on the training device
        model.to(home)  # back where it came from: the catalog's models on the CPU (what is saved is portable)
        recorder.log(result.state.step, {f"final_{k}": v for k, v in final_eval.items()})
        summary = _summary(stage, kind, result, final_eval, wall, recorder, trainable, total, fingerprint, run)
        summary.update(data.extra_summary)
        summary["lora_adapter"] = adapter
        summary["processes"] = dist.world_size
        if track.enabled:
            _log_artifacts(stage, model, tokenizer, recorder, track)
            tracking.log_dict(summary, "summary.json")
    return model, summary, adapter_files


def _summary(stage, kind, result, final_eval, wall, recorder, trainable, total, fingerprint, run) -> dict[str, Any]:
    st = result.state
    _, speeds = recorder.series("tokens_per_s")
    _, losses = recorder.series("loss")
    _, norms = recorder.series("grad_norm")
    return {
        "stage": stage,
        "kind": kind,
        "enabled": True,
        "steps": st.step,
        "tokens_seen": st.tokens_seen,
        "train_loss": losses[-1] if losses else st.last_loss,
        "grad_norm": norms[-1] if norms else None,
        **final_eval,
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "wall_s": round(wall, 2),
        "trainable_params": trainable,
        "total_params": total,
        "nan_skips": st.nan_skips,
        "stopped_early": st.stopped_early,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "fingerprint": fingerprint,
        "mlflow_run_id": run.info.run_id if run is not None else None,
    }


def _log_artifacts(stage: str, model: nn.Module, tokenizer, recorder: tracking.StageRecorder, track) -> None:
    if track.plots:
        tracking.log_figure(tracking.loss_curve_figure(recorder, stage), "plots/loss_curve.png")
        fig = tracking.expert_load_figure(recorder, stage)
        if fig is not None:
            tracking.log_figure(fig, "plots/expert_load.png")
    if track.log_tokenizer and tokenizer is not None:
        tracking.log_saved(tokenizer, "tokenizer")
    if track.log_model:
        tracking.log_saved(model, "model")
