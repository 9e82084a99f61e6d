"""The training loop: accumulation, clipping, mixed precision, NaN guard, eval / early stopping,
crash-safe checkpoints and exact resume.

One *optimizer step* consumes ``gradient_accumulation_steps`` consecutive micro-batches of the
:class:`~xoron_pipelines.training.data.BatchSource`; the micro-batch stream runs through epoch
0, 1, 2, ... (position ``(epoch, index)``), so the data position is two integers and resuming
needs no replay. Each micro-batch's loss is weighted by its share of the window's target tokens
(``labels != -100``, times ``loss_weights`` when given), so accumulating k micro-batches gives
the gradient of one batch k times larger; with a custom ``loss_fn`` the weight is 1/k.

After each optimizer step: scheduler step, ``model.update_moe_bias()`` (when the model has it),
logging every ``logging_steps``, evaluation every ``eval_steps`` (early stopping), and a
checkpoint every ``save_steps`` and at the end. A window whose loss or gradient norm is not
finite is skipped (no update, counted); more than ``max_nan_skips`` skips abort the run.
(With fp16, an overflow the grad scaler handles by lowering its scale is not counted, as long as
the scale stays >= 1.)

Re-running ``train`` with the same ``ckpt_dir`` resumes from the newest valid checkpoint: model,
optimizer, scheduler, grad scaler, all RNG states and the data position are restored, so on CPU
in deterministic mode the final weights are bit-identical to an uninterrupted run. A finished
run's directory makes ``train`` return at once with the final weights loaded.
``cfg.resume_from_checkpoint`` chooses the starting point (:meth:`_Trainer.resume_point`):
``auto`` (the newest valid checkpoint), ``never`` (start afresh; the directory's checkpoints are
moved into ``superseded-<time>/``, nothing is deleted) or the path of a checkpoint.

A longer run (``max_steps`` / ``num_epochs`` raised) continues from the checkpoint, finished or
not: from the resumed step on, the learning rate follows the schedule of the new total (a cosine
or linear decay is stretched to the new end, so the lr can rise again at the resume point). A
shorter run than the newest checkpoint starts afresh (that checkpoint is set aside, with a
warning); a checkpoint exactly at the new total is the result.

With a data-parallel ``parallel`` context (:class:`~xoron_pipelines.training.parallel.DataParallel`,
set up by :mod:`xoron_pipelines.training.distributed`) every rank runs this loop on its own shard of
each micro-batch: the window's target weight and token count are summed over ranks before the
backward passes (so the token-weighted loss is that of the global batch), gradients are synchronised
on the window's last micro-batch only, logged losses and eval metrics are reduced over ranks, and
only rank 0 writes checkpoints (holding every rank's RNG state) and calls ``on_log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from xoron_pipelines.device import resolve_compile, resolve_precision, tf32_mode
from xoron_pipelines.training.checkpoint import (
    CheckpointWriter,
    CorruptCheckpointError,
    LoadedCheckpoint,
    Snapshot,
    checkpoint_step,
    latest_valid_checkpoint,
    load_checkpoint,
    quarantine_after,
    set_aside,
    verify_checkpoint,
)
from xoron_pipelines.training.config import TrainConfig
from xoron_pipelines.training.data import IGNORE_INDEX, BatchSource
from xoron_pipelines.training.float8 import convert_to_float8, revert_float8
from xoron_pipelines.training.optim import build_optimizer
from xoron_pipelines.training.parallel import SingleProcess
from xoron_pipelines.training.reproducibility import capture_rng, deterministic_mode, restore_rng, seed_everything
from xoron_pipelines.training.schedule import build_scheduler

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
EvalFn = Callable[[nn.Module], "float | dict[str, float]"]
LogFn = Callable[[int, dict[str, float]], None]
StatsFn = Callable[..., dict[str, float]]  # stats_fn(model, step=step)
ParamGroups = list[dict] | Callable[[nn.Module], list[dict]]


class NonFiniteLossError(RuntimeError):
    """More optimizer steps had a non-finite loss or gradient norm than ``max_nan_skips`` allows."""


@dataclass
class TrainState:
    """Counters and data position; stored in every checkpoint (``trainer_state.json``)."""

    step: int = 0  # optimizer steps taken
    micro_step: int = 0  # micro-batches consumed (including skipped windows)
    epoch: int = 0  # position of the next micro-batch ...
    batch_index: int = 0  # ... in the batch source
    tokens_seen: int = 0
    nan_skips: int = 0
    overflow_skips: int = 0  # fp16 steps the grad scaler skipped
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    finished: bool = False
    last_loss: float | None = None
    total_steps: int = 0
    batches_per_epoch: int = 0


@dataclass
class TrainResult:
    """What :func:`train` returns (the model itself is trained in place)."""

    state: TrainState
    last_checkpoint: Path | None
    resumed_from: Path | None
    last_eval: dict[str, float] | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def global_step(self) -> int:
        return self.state.step


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Default objective: ``model(**batch).loss`` (input_ids, labels, optional loss_weights)."""
    return model(**batch).loss


def lm_loss_without_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """:func:`lm_loss` for models whose forward takes ``return_logits`` (the Xoron model): with
    ``return_logits=False`` its fused cross-entropy never materialises the (tokens x vocab) logits."""
    return model(**batch, return_logits=False).loss


def default_loss(model: nn.Module) -> LossFn:
    """The default objective of ``model``: :func:`lm_loss_without_logits` when its forward takes
    ``return_logits``, else :func:`lm_loss`."""
    params = inspect.signature(model.forward).parameters
    return lm_loss_without_logits if "return_logits" in params else lm_loss


def target_weight(batch: Batch) -> float:
    """Total weight of the next-token targets of an LM batch (how the model normalises its loss)."""
    labels = batch["labels"][:, 1:]
    valid = (labels != IGNORE_INDEX).to(torch.float32)
    if "loss_weights" in batch:
        valid = valid * batch["loss_weights"][:, 1:].to(torch.float32)
    return float(valid.sum())


# ------------------------------------------------------------------------------ setup helpers
def batch_tokens(batch: Batch) -> int:
    """Tokens the model reads in ``batch``: every ``*input_ids`` tensor (LM/SFT rows, and both the
    chosen and rejected sequences of a DPO pair)."""
    return sum(v.numel() for k, v in batch.items() if k.endswith("input_ids"))


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on activation (gradient) checkpointing through the model's own switch (transformers API:
    ``activation_checkpointing_enable`` in v5, ``gradient_checkpointing_enable`` before), non-reentrant."""
    for name, kwarg in (
        ("activation_checkpointing_enable", "activation_checkpointing_kwargs"),
        ("gradient_checkpointing_enable", "gradient_checkpointing_kwargs"),
    ):
        enable = getattr(model, name, None)
        if enable is None:
            continue
        try:
            enable(**{kwarg: {"use_reentrant": False}})
        except TypeError:  # a custom model's switch without keyword arguments
            enable()
        return
    raise ValueError(f"gradient_checkpointing: {type(model).__name__} has no gradient_checkpointing_enable()")


def _compiled(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    kwargs: dict[str, Any] = {"backend": cfg.compile_backend}
    if cfg.compile_mode != "default":
        kwargs["mode"] = cfg.compile_mode
    return torch.compile(model, **kwargs)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _to(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on ``device``; to a GPU through pinned host memory (unless already
    pinned, e.g. by a DataLoader with ``pin_memory``) with ``non_blocking`` copies, so the copy
    overlaps the work already queued on the device."""

    def move(v: torch.Tensor) -> torch.Tensor:
        if v.device == device:
            return v
        if device.type == "cuda" and v.device.type == "cpu" and not v.is_pinned():
            v = v.pin_memory()
        return v.to(device, non_blocking=True)

    return {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _eval_metric(result: float | dict[str, float]) -> tuple[float, dict[str, float]]:
    if isinstance(result, dict):
        key = "eval_loss" if "eval_loss" in result else "loss"
        if key not in result:
            raise ValueError(f"eval_fn returned {sorted(result)}; it needs an 'eval_loss' (or 'loss') entry")
        return float(result[key]), {(k if k.startswith("eval_") else f"eval_{k}"): float(v) for k, v in result.items()}
    return float(result), {"eval_loss": float(result)}


# ------------------------------------------------------------------------------ the trainer
class _Trainer:
    """State and steps of one :func:`train` call (kept in a class to keep functions short)."""

    def __init__(
        self,
        model: nn.Module,
        source: BatchSource,
        cfg: TrainConfig,
        ckpt_dir: Path,
        eval_fn: EvalFn | None,
        on_log: LogFn | None,
        loss_fn: LossFn | None,
        desc: str,
        progress: bool,
        parallel: SingleProcess,
        param_groups: ParamGroups | None = None,
        stats_fn: StatsFn | None = None,
    ) -> None:
        if cfg.eval_steps is not None and eval_fn is None:
            raise ValueError("eval_steps is set but no eval_fn was given")
        if len(source) < 1:
            raise ValueError("the batch source has no batches")
        self.model, self.source, self.cfg, self.ckpt_dir = model, source, cfg, ckpt_dir
        self.par = parallel
        self.eval_fn, self.desc = eval_fn, desc
        self.on_log = on_log if parallel.is_writer else None
        self.progress = progress and parallel.is_writer
        # a loss_fn that is a weighted sum of the default LM loss (``token_weighted``) keeps the token weighting
        self.custom_loss = loss_fn is not None and not getattr(loss_fn, "token_weighted", False)
        self.param_groups = param_groups  # optimizer groups replacing the default ones (LoRA+)
        self.stats_fn = stats_fn if parallel.is_writer else None
        self.loss_fn = loss_fn or default_loss(model)
        self.device = _device_of(model)
        self.precision = resolve_precision(cfg.precision, self.device)  # auto: bf16 on GPUs that have it
        self.compile = resolve_compile(cfg.compile, self.device)  # auto: on CUDA
        self.state = TrainState(total_steps=cfg.total_steps(len(source)), batches_per_epoch=len(source))
        self.writer = (
            CheckpointWriter(ckpt_dir, cfg.keep_last_k, asynchronous=cfg.async_checkpointing)
            if parallel.is_writer
            else None
        )
        self.history: list[dict[str, float]] = []
        self.last_eval: dict[str, float] | None = None
        self._interval = {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "tokens": 0, "t0": time.perf_counter()}

    # ---- setup -------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed + self.par.rank)  # each rank draws its own dropout masks
        self.model.train()
        if cfg.gradient_checkpointing:
            _enable_gradient_checkpointing(self.model)
        if cfg.float8:  # torchao Float8Linear layers: on the device, before wrapping and compiling
            convert_to_float8(self.model)
        wrapped = self.par.wrap(self.model)  # before the optimizer: FSDP2 replaces the parameters
        groups = self.param_groups(self.model) if callable(self.param_groups) else self.param_groups
        self.optimizer = build_optimizer(self.model, cfg, groups)
        total = self.state.total_steps
        self.scheduler = build_scheduler(self.optimizer, cfg.lr_scheduler, total, cfg.warmup(total), cfg.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.forward_model = _compiled(wrapped, cfg) if self.compile else wrapped
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def resume_point(self, resume: bool) -> Path | None:
        """The checkpoint to continue from, per ``cfg.resume_from_checkpoint`` (the writer decides;
        see the module docstring). Checkpoints not continued from are set aside, never deleted."""
        choice, ckpt_dir, total = self.cfg.resume_from_checkpoint, self.ckpt_dir, self.state.total_steps
        if choice == "never":
            set_aside(ckpt_dir, -1, "resume_from_checkpoint=never")
            return None
        if choice != "auto":
            path = Path(choice)
            if (reason := verify_checkpoint(path)) is not None:
                raise CorruptCheckpointError(f"resume_from_checkpoint {choice}: {reason}")
            step = checkpoint_step(path)
            if step > total:
                raise ValueError(
                    f"resume_from_checkpoint {choice} is at step {step}, beyond this run's {total} "
                    "steps (max_steps / num_epochs)"
                )
            set_aside(ckpt_dir, step, f"resume_from_checkpoint={choice} (step {step})")
            return path
        newest = latest_valid_checkpoint(ckpt_dir)
        if newest is not None and not resume:
            raise FileExistsError(
                f"{ckpt_dir} already holds checkpoints ({newest.name}); pass resume=True or use another ckpt_dir"
            )
        if newest is not None and (step := checkpoint_step(newest)) > total:
            log.warning(
                "the newest checkpoint %s is at step %d, beyond this run's %d steps: starting afresh",
                newest,
                step,
                total,
            )
            set_aside(ckpt_dir, -1, f"run shortened to {total} steps")
            return None
        quarantine_after(ckpt_dir, checkpoint_step(newest) if newest else -1)  # the corrupt ones newer than it
        return newest

    def restore(self, ckpt: LoadedCheckpoint) -> None:
        trees = ckpt.trees
        saved = TrainState(**trees["trainer_state"]["state"])
        if saved.batches_per_epoch != len(self.source):
            raise ValueError(
                f"checkpoint {ckpt.path} was written for {saved.batches_per_epoch} batches per epoch, "
                f"the data now has {len(self.source)}; use a new ckpt_dir for new data"
            )
        self.par.load_full_state(self.model, self.optimizer, ckpt.model, trees["optimizer"])
        fresh = [dict(vars(f)) for f in self.scheduler.lr_lambdas]  # the schedule of this run's total
        self.scheduler.load_state_dict(trees["trainer_state"]["scheduler"])
        total = self.state.total_steps
        if saved.total_steps != total:
            log.warning(
                "checkpoint %s belongs to a run of %d steps; continuing it to %d steps (from step %d the lr "
                "follows the schedule of %d steps)",
                ckpt.path,
                saved.total_steps,
                total,
                saved.step,
                total,
            )
            for f, state in zip(self.scheduler.lr_lambdas, fresh):
                vars(f).update(state)
            at = self.scheduler.last_epoch
            lrs = [base * f(at) for base, f in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            self.scheduler._last_lr = lrs
            saved.total_steps = total
            saved.finished = saved.finished and saved.step >= total
        if trees["trainer_state"]["scaler"]:
            self.scaler.load_state_dict(trees["trainer_state"]["scaler"])
        self._restore_rng(trees)
        self.state = saved
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)", ckpt.path, saved.step, saved.epoch, saved.batch_index
        )

    def _restore_rng(self, trees: dict[str, Any]) -> None:
        """This rank's generator states (rank 0's are ``rng``, the others' ``trainer_state.rng_ranks``)."""
        states = [trees["rng"], *trees["trainer_state"].get("rng_ranks", [])]
        if self.par.rank < len(states):
            restore_rng(states[self.par.rank])
        else:  # more ranks than when the checkpoint was written
            log.warning("the checkpoint holds no RNG state for rank %d; reseeding it", self.par.rank)
            seed_everything(self.cfg.seed + self.par.rank)

    # ---- one optimizer step ------------------------------------------------------------
    def _next_window(self) -> list[Batch]:
        st, n = self.state, len(self.source)
        batches = []
        for _ in range(self.cfg.gradient_accumulation_steps):
            batches.append(self.source.batch(st.epoch, st.batch_index))
            st.micro_step += 1
            st.batch_index += 1
            if st.batch_index == n:
                st.epoch, st.batch_index = st.epoch + 1, 0
        return batches

    def _accumulate(self, batches: list[Batch]) -> float | None:
        """Forward/backward over the window; the window's loss, or None when one is not finite.

        Weights, token counts and the loss are summed over ranks. Gradients are reduced (averaged
        by DDP / FSDP2) on the last micro-batch only, hence the factor ``world_size`` in the backward.
        """
        par = self.par
        weights = [1.0] * len(batches) if self.custom_loss else [target_weight(b) for b in batches]
        tokens = sum(batch_tokens(b) for b in batches)
        total, tokens = par.all_reduce_sum([sum(weights), float(tokens)])
        if total <= 0:
            weights, total = [1.0] * len(batches), float(len(batches) * par.world_size)
        self.state.tokens_seen += int(tokens)
        self._interval["tokens"] += int(tokens)
        window_loss, finite = 0.0, True
        for i, (batch, w) in enumerate(zip(batches, weights)):
            batch = _to(batch, self.device)
            with par.gradient_sync(self.forward_model, enabled=i == len(batches) - 1):
                with _autocast(self.device, self.precision):
                    loss = self.loss_fn(self.forward_model, batch)
                if not torch.isfinite(loss.detach()).all():
                    if par.world_size == 1:
                        return None
                    finite = False  # keep going: the other ranks' gradient reduction waits for this rank
                scaled = loss.float() * (w / total)
                self.scaler.scale(scaled * par.world_size).backward()
            window_loss += float(scaled.detach())
        if par.world_size > 1:
            window_loss = par.all_reduce_sum([window_loss if finite else math.nan])[0]
        return window_loss if math.isfinite(window_loss) else None

    def _apply(self) -> float | None:
        """Unscale, clip and step; the gradient norm, or None (no update) when it is not finite."""
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.max_grad_norm if self.cfg.clip_enabled else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: a DTensor
        if not math.isfinite(norm):
            if self.scaler.is_enabled():
                self.scaler.update()  # records the overflow: the fp16 loss scale goes down
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        update_bias = getattr(self.model, "update_moe_bias", None)
        if callable(update_bias):
            update_bias()
        return norm

    def step(self) -> bool:
        """One optimizer step (or skipped window); True when an update was applied."""
        lr = self.scheduler.get_last_lr()[0]
        loss = self._accumulate(self._next_window())
        norm = self._apply() if loss is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        if norm is None:
            if loss is not None and self.scaler.is_enabled() and self.scaler.get_scale() >= 1.0:
                self.state.overflow_skips += 1  # fp16 overflow: dynamic loss scaling, not a divergence
            else:  # (a scale driven below 1 means the gradients are not finite at any scale)
                self._skip(loss)
            return False
        st = self.state
        st.step += 1
        st.last_loss = loss
        self._interval["loss"] += loss
        self._interval["grad_norm"] += norm
        self._interval["steps"] += 1
        self._lr = lr
        return True

    def _skip(self, loss: float | None) -> None:
        st = self.state
        st.nan_skips += 1
        what = "loss" if loss is None else "gradient norm"
        log.warning(
            "non-finite %s at step %d (micro-batch %d): update skipped (%d/%d skips allowed)",
            what,
            st.step,
            st.micro_step,
            st.nan_skips,
            self.cfg.max_nan_skips,
        )
        if st.nan_skips > self.cfg.max_nan_skips:
            raise NonFiniteLossError(
                f"{st.nan_skips} optimizer steps had a non-finite {what} (last at step {st.step}, micro-batch "
                f"{st.micro_step}), more than max_nan_skips={self.cfg.max_nan_skips}: aborting; lower the "
                f"learning rate, check the data, or resume from {getattr(self.writer, 'last_path', None) or 'the last checkpoint'}"
            )

    # ---- after a step ------------------------------------------------------------------
    def log_metrics(self) -> dict[str, float] | None:
        iv, st = self._interval, self.state
        if iv["steps"] == 0:
            return None
        elapsed = max(time.perf_counter() - iv["t0"], 1e-9)
        metrics = {
            "loss": iv["loss"] / iv["steps"],
            "lr": self._lr,
            "grad_norm": iv["grad_norm"] / iv["steps"],
            "tokens_per_s": iv["tokens"] / elapsed,
            "nan_skips": float(st.nan_skips),
            "epoch": st.micro_step / st.batches_per_epoch,
            "tokens_seen": float(st.tokens_seen),
        }
        if self.stats_fn is not None:
            metrics.update(self.stats_fn(self.model, step=st.step))
        metrics.update(getattr(self.loss_fn, "last_metrics", None) or {})  # e.g. DPO's rewards/* of the last call
        self._interval = {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "tokens": 0, "t0": time.perf_counter()}
        self._emit(metrics)
        return metrics

    def evaluate(self) -> None:
        st = self.state
        self.model.eval()
        try:
            with torch.no_grad(), _autocast(self.device, self.precision):
                _, metrics = _eval_metric(self.eval_fn(self.model))
        finally:
            self.model.train()
        metrics = dict(zip(metrics, self.par.all_reduce_mean(list(metrics.values()))))  # mean over ranks
        value = metrics["eval_loss"]
        if st.best_eval_loss is None or value < st.best_eval_loss - self.cfg.early_stopping_min_delta:
            st.best_eval_loss, st.evals_without_improvement = value, 0
        else:
            st.evals_without_improvement += 1
        patience = self.cfg.early_stopping_patience
        if patience is not None and st.evals_without_improvement >= patience:
            st.stopped_early = True
            log.info(
                "early stopping at step %d: no improvement of eval loss %.6g in %d evaluations",
                st.step,
                st.best_eval_loss,
                patience,
            )
        self.last_eval = metrics
        self._emit(metrics)

    def _emit(self, metrics: dict[str, float]) -> None:
        self.history.append({"step": float(self.state.step), **metrics})
        if self.on_log is not None:
            self.on_log(self.state.step, metrics)

    def save(self) -> None:
        """Checkpoint (collective under data parallelism: every rank calls it, rank 0 writes)."""
        st = self.state
        model_state, optimizer_state = self.par.full_state(self.model, self.optimizer)
        rngs = self.par.gather_objects(capture_rng())
        if self.writer is None:
            return
        trainer_state = {
            "state": dataclasses.asdict(st),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.cfg.model_dump(mode="json"),
        }
        if len(rngs) > 1:
            trainer_state["rng_ranks"] = rngs[1:]
        snap = Snapshot.take(st.step, model_state, optimizer=optimizer_state, rng=rngs[0], trainer_state=trainer_state)
        self.writer.save(snap)

    # ---- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        st, cfg = self.state, self.cfg
        bar = tqdm(
            total=st.total_steps,
            initial=st.step,
            desc=self.desc,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        self._interval["t0"] = time.perf_counter()
        try:
            while not (st.finished or st.stopped_early or st.step >= st.total_steps):
                if not self.step():
                    continue
                bar.update(1)
                if st.step % cfg.logging_steps == 0:
                    metrics = self.log_metrics()
                    bar.set_postfix(
                        loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", tok_s=f"{metrics['tokens_per_s']:.0f}"
                    )
                if cfg.eval_steps and st.step % cfg.eval_steps == 0:
                    self.evaluate()
                if st.step >= st.total_steps or st.stopped_early:
                    break
                if st.step % cfg.save_steps == 0:
                    self.save()
            if not st.finished:
                self.log_metrics()
                st.finished = True
                self.save()
        finally:
            bar.close()


def train(
    model: nn.Module,
    train_batches: BatchSource,
    cfg: TrainConfig,
    *,
    ckpt_dir: str | os.PathLike,
    eval_fn: EvalFn | None = None,
    on_log: LogFn | None = None,
    loss_fn: LossFn | None = None,
    resume: bool = True,
    desc: str = "train",
    progress: bool = True,
    parallel: SingleProcess | None = None,
    param_groups: ParamGroups | None = None,
    stats_fn: StatsFn | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train_batches`` and return counters, eval metrics and checkpoints.

    ``eval_fn(model) -> float | {"eval_loss": ..., ...}`` runs every ``cfg.eval_steps`` (model in eval
    mode, no grad; lower is better). ``on_log(step, metrics)`` receives training metrics (loss, lr,
    grad_norm, tokens_per_s, nan_skips, epoch, tokens_seen) every ``cfg.logging_steps`` and eval
    metrics after each evaluation. ``loss_fn(model, batch) -> scalar`` replaces ``model(**batch).loss``;
    micro-batches are then weighted equally, unless the ``loss_fn`` has ``token_weighted = True`` (a
    weighted default LM loss: :class:`~xoron_pipelines.training.stage.StageObjective`).
    With ``resume`` (default) training continues from the checkpoint ``cfg.resume_from_checkpoint``
    chooses (``auto``: the newest valid one in ``ckpt_dir``); ``resume=False`` with ``auto`` refuses
    to start when ``ckpt_dir`` already holds checkpoints.

    ``parallel``: the data-parallel context of this rank (see :mod:`xoron_pipelines.training.parallel`);
    None for a single process. Under data parallelism ``train_batches`` is this rank's shard of every
    micro-batch, every rank reads ``ckpt_dir`` when resuming (shared storage across nodes), and
    the returned result of ranks other than 0 has no checkpoint path. ``param_groups`` replaces the
    optimizer's default parameter groups (LoRA+: :func:`~xoron_pipelines.training.lora.lora_plus_param_groups`):
    a list, or a function of the model called once it is wrapped for data parallelism (FSDP2 replaces
    the parameters, so a list taken before would hold stale ones). ``stats_fn(model, step=step) -> {name: value}``
    adds model statistics (e.g. per-layer expert load) to every training log entry (rank 0's model); a
    ``loss_fn`` with a ``last_metrics`` dict (DPO's rewards) adds those of its latest call too.
    """
    ckpt_dir = Path(ckpt_dir)
    par = parallel or SingleProcess()
    with deterministic_mode(cfg.deterministic), tf32_mode(cfg.tf32, _device_of(model)):
        trainer = _Trainer(
            model, train_batches, cfg, ckpt_dir, eval_fn, on_log, loss_fn, desc, progress, par, param_groups, stats_fn
        )
        try:
            resumed = par.broadcast(trainer.resume_point(resume) if par.is_writer else None)
            trainer.build()
            ckpt = load_checkpoint(resumed, verify=False, map_location=trainer.device) if resumed is not None else None
            if ckpt is not None:
                trainer.restore(ckpt)
            trainer.run()
        finally:
            revert_float8(model)  # the trained model is a plain one again (same parameters)
            if trainer.writer is not None:
                trainer.writer.close()  # joins a pending asynchronous save (and re-raises its error)
        par.barrier()  # the other ranks return once rank 0's last checkpoint is on disk
    last = trainer.writer.last_path if trainer.writer is not None else None
    return TrainResult(trainer.state, last or resumed, resumed, trainer.last_eval, trainer.history)
