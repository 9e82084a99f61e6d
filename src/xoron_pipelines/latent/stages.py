"""The four latent training stages: what each trains, its loss, and one stage's training run.

==================  ==========  ============================================  ===========
stage               data        objective                                     trains
==================  ==========  ============================================  ===========
pretrain_middle     pretrain    middle(z(text)) -> z(text) (identity):        middle
                                latent MSE + InfoNCE + reconstruction
pretrain_adapter    pretrain    decoder reproduces the text from the prefix   adapter
finetune_middle     pairs       middle(z(source)) -> z(target), same losses   middle
finetune_adapter    pairs       decoder writes the target from middle's       adapter
                                latents of the source
==================  ==========  ============================================  ===========

The compression trains in the first stage that runs -- unlike the seed's code, whose
compression stayed a frozen random projection -- and is frozen afterwards while
``freeze_encoder_compression_in_pipeline`` is true (the encoder then stays frozen throughout,
so the embedding cache stands in for it). With the flag false, the compression and the top
``num_encoder_unfrozen_layers`` encoder layers train in every stage (the encoder is then run on
the fly: the cached embeddings are stale once it has trained). ``training_phase`` replaces that
choice in every stage: ``phase1`` = decoder alignment (adapter only), ``phase2`` = encoder
training (top encoder layers + compression), ``phase3`` = middle model only; a stage whose loss
does not reach any of those modules is skipped. The decoder never trains.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xoron_pipelines.datasets.training_store import CheckpointStore
from xoron_pipelines.latent import losses
from xoron_pipelines.latent.data import RowBatches
from xoron_pipelines.latent.model import LatentModel, encoder_layers
from xoron_pipelines.training import TrainConfig
from xoron_pipelines.training.fingerprint import fingerprint, tensors_digest, weights_digest
from xoron_pipelines.training.schema import StageParams, TrackingParams
from xoron_pipelines.training.stage import StageData, run_stage

log = logging.getLogger(__name__)

PHASE_PARTS = {"phase1": {"adapter"}, "phase2": {"encoder", "compression"}, "phase3": {"middle"}}


@dataclass(frozen=True)
class StageSpec:
    name: str
    data: str  # "pretrain" | "pairs"
    kind: str  # "middle" | "adapter"
    uses_middle: bool

    @property
    def identity(self) -> bool:
        return self.data == "pretrain"


def stage_spec(stage: str, p: Any) -> StageSpec:
    data = "pretrain" if stage.startswith("pretrain") else "pairs"
    kind = "middle" if stage.endswith("middle") else "adapter"
    uses_middle = kind == "middle" or stage == "finetune_adapter" or p.adapter_pretrain_use_middle
    return StageSpec(stage, data, kind, uses_middle)


def used_parts(spec: StageSpec) -> set[str]:
    parts = {"encoder", "compression", "middle" if spec.kind == "middle" else "adapter"}
    return parts | ({"middle"} if spec.uses_middle else set())


def trainable_parts(spec: StageSpec, p: Any, first_stage: bool) -> set[str]:
    """Modules trained in this stage (see the module docstring)."""
    if p.training_phase == "normal":
        own = {spec.kind} | ({"compression"} if first_stage else set())
        if not p.freeze_encoder_compression_in_pipeline:
            own |= {"encoder", "compression"}
    else:
        own = set(PHASE_PARTS[p.training_phase])
    parts = own & used_parts(spec)
    if p.num_encoder_unfrozen_layers == 0:
        parts.discard("encoder")
    return parts


def set_trainable(model: LatentModel, parts: set[str], n_encoder_layers: int) -> None:
    """requires_grad on exactly ``parts`` (the encoder: its top ``n_encoder_layers`` layers)."""
    model.requires_grad_(False)
    for name in ("compression", "middle", "adapter"):
        if name in parts:
            getattr(model, name).requires_grad_(True)
    if "encoder" in parts:
        model.encoder.unfreeze_top(n_encoder_layers)


class StageModule(nn.Module):
    """What the engine trains: the stage's trainable modules (registered, so checkpoints hold
    only them) with a forward that computes the stage loss through the whole latent model."""

    def __init__(self, model: LatentModel, spec: StageSpec, p: Any, parts: set[str]) -> None:
        super().__init__()
        mods = {n: getattr(model, n) for n in ("compression", "middle", "adapter") if n in parts}
        if "encoder" in parts:
            layers = encoder_layers(model.encoder.model)
            mods["encoder_top"] = nn.ModuleList(list(layers)[len(layers) - p.num_encoder_unfrozen_layers :])
        self.parts = nn.ModuleDict(mods)
        object.__setattr__(self, "latent", model)  # not a child: frozen parts stay out of checkpoints
        self.spec, self.p = spec, p

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return stage_loss(self.latent, self.spec, self.p, batch)[0]

    def gradient_checkpointing_enable(self, **_: Any) -> None:
        """Activation checkpointing of the middle blocks and, when it trains, the encoder."""
        self.latent.middle.gradient_checkpointing = True
        if "encoder_top" in self.parts and hasattr(self.latent.encoder.model, "gradient_checkpointing_enable"):
            self.latent.encoder.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )


def _embedding(model: LatentModel, batch: dict, prefix: str) -> torch.Tensor:
    if f"{prefix}_emb" in batch:
        return batch[f"{prefix}_emb"]
    return model.encoder(batch[f"{prefix}_ids"], batch[f"{prefix}_mask"])


def stage_loss(model: LatentModel, spec: StageSpec, p: Any, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The stage objective and its parts (floats, for logging)."""
    emb = _embedding(model, batch, "src")
    z = model.compression(emb)
    z_in, valid_in = model.with_stop(z, batch["src_ntok"])
    if spec.kind == "middle":
        pred = model.middle(z_in)
        if spec.identity:
            target, valid_t = z_in.detach(), valid_in
        else:
            z_t = model.compression(_embedding(model, batch, "tgt"))
            target, valid_t = model.with_stop(z_t, batch["tgt_ntok"])
            target = target.detach()
        mse = losses.latent_mse(pred, target)
        nce = losses.info_nce(pred, target, valid_t, p.contrastive_temperature)
        rec = losses.reconstruction(model.compression.reconstruct(z), emb)
        loss = p.latent_mse_weight * mse + p.contrastive_weight * nce + p.reconstruction_weight * rec
        return loss, {
            k: float(v.detach()) for k, v in (("latent_mse", mse), ("contrastive", nce), ("reconstruction", rec))
        }
    z_in, valid_in = _decoder_latents(model, spec, z_in, valid_in)
    lm = model.lm_loss(model.adapter(z_in, valid_in), batch["dec_ids"], batch["dec_mask"])
    return lm, {"lm_loss": float(lm.detach())}


def _decoder_latents(
    model: LatentModel, spec: StageSpec, z_in: torch.Tensor, valid_in: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latents an adapter stage hands the prefix adapter: the source's, through the middle
    model when the stage uses it."""
    if spec.uses_middle:
        z_in = model.middle(z_in)
        valid_in = model.valid_until_stop(z_in)
    return z_in, valid_in


#: the prefixes :func:`prefix_ablation` compares (summary / MLflow keys ``<name>_loss``)
ABLATIONS = ("prefix", "shuffled_prefix", "zero_latent_prefix")


@torch.no_grad()
def prefix_ablation(model: LatentModel, spec: StageSpec, source: RowBatches) -> dict[str, float]:
    """Does the latent carry information? The decoder's loss per target token on every row of
    ``source`` (held-out pairs) given

    * ``prefix``: the prefix made from the row's own latents (the stage's objective);
    * ``shuffled_prefix``: the prefix made from another row's latents (the latents, with their
      validity, rolled by one across all rows: every row gets a different row's latents);
    * ``zero_latent_prefix``: the prefix the adapter makes from all-zero latents, all valid (the
      empty prefix: no source at all, the same prefix length, so the same target tokens count).

    Returns ``{"<name>_loss": ...}`` (token-weighted means) and ``prefix_gain_vs_shuffled``
    (shuffled minus own: > 0 when the latent carries information about the target). An adapter
    stage only; needs at least two rows."""
    if spec.kind != "adapter":
        raise ValueError(f"latent stage {spec.name} has no decoder objective to ablate")
    was = model.training
    model.eval()
    device = model.stop_latent.device
    batches = [{k: v.to(device) for k, v in b.items()} for b in source.all()]
    latents = []
    for batch in batches:
        z, valid = model.with_stop(model.compression(_embedding(model, batch, "src")), batch["src_ntok"])
        latents.append(_decoder_latents(model, spec, z, valid))
    sizes = [z.shape[0] for z, _ in latents]
    if sum(sizes) < 2:
        raise ValueError(f"latent stage {spec.name}: a shuffled prefix needs at least 2 held-out rows")
    order = (torch.arange(sum(sizes), device=device) + 1) % sum(sizes)
    shuffled = zip(
        torch.cat([z for z, _ in latents])[order].split(sizes), torch.cat([v for _, v in latents])[order].split(sizes)
    )
    totals = dict.fromkeys(ABLATIONS, 0.0)
    tokens = 0.0
    for batch, (z, valid), (z_s, valid_s) in zip(batches, latents, shuffled):
        ids, mask = batch["dec_ids"], batch["dec_mask"]
        n = float(mask.sum())  # every decoder token is a target (the prefix precedes it)
        prefixes = {
            "prefix": model.adapter(z, valid),
            "shuffled_prefix": model.adapter(z_s, valid_s),
            "zero_latent_prefix": model.adapter(torch.zeros_like(z), torch.ones_like(valid)),
        }
        for name, prefix in prefixes.items():
            totals[name] += float(model.lm_loss(prefix, ids, mask)) * n
        tokens += n
    model.train(was)
    out = {f"{name}_loss": total / max(tokens, 1.0) for name, total in totals.items()}
    out["prefix_gain_vs_shuffled"] = out["shuffled_prefix_loss"] - out["prefix_loss"]
    return out


@torch.no_grad()
def evaluate(model: LatentModel, spec: StageSpec, p: Any, source: RowBatches) -> dict[str, float]:
    """Mean stage loss and parts over every row of ``source`` (eval mode)."""
    was = model.training
    model.eval()
    totals: dict[str, float] = {}
    batches = source.all()
    device = model.stop_latent.device
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, parts = stage_loss(model, spec, p, batch)
        for k, v in {"eval_loss": float(loss), **parts}.items():
            totals[k] = totals.get(k, 0.0) + v / len(batches)
    model.train(was)
    return totals


def train_config(spec: StageSpec, p: Any, batches: int, eval_steps: int) -> TrainConfig:
    """The engine config of a stage: its epochs and batch size, the global optimiser knobs."""
    steps = max(1, math.floor(p.stage_value(spec.name, "epochs") * batches / p.gradient_accumulation_steps))
    return TrainConfig(
        learning_rate=p.learning_rate,
        weight_decay=p.weight_decay,
        warmup_steps=min(p.warmup_steps, steps - 1),
        max_steps=steps,
        batch_size=p.stage_value(spec.name, "batch_size"),
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        max_grad_norm=p.max_grad_norm,
        precision=p.precision,
        gradient_checkpointing=p.use_gradient_checkpointing,
        compile=p.use_torch_compile,
        compile_mode=p.torch_compile_mode,
        seed=p.seed,
        save_steps=p.save_every,
        async_checkpointing=p.async_checkpointing,
        logging_steps=min(p.logging_steps, steps),
        eval_steps=eval_steps,
    )


#: latent parameters outside a stage's fingerprint: checkpoint / logging cadence, paths, inference,
#: data-loader workers, and the durations (raising epochs continues from the newest checkpoint)
RESULT_NEUTRAL_LATENT_FIELDS = frozenset(
    {
        "checkpoint_dir",
        "keep_configurations",
        "save_every",
        "async_checkpointing",
        "logging_steps",
        "progress",
        "num_workers",
        "prefetch_factor",
        "pretrain_best_model_filename",
        "finetune_best_model_filename",
        "handoff_best_model_filename",
        "temperature",
        "max_generation_length",
        "do_sample",
        "top_p",
        "top_k",
        "inference_examples",
        "num_epochs",
        "pretrain_middle_epochs",
        "pretrain_adapter_epochs",
        "finetune_middle_epochs",
        "finetune_adapter_epochs",
    }
)


def latent_fingerprint(p: Any, spec: StageSpec, model: nn.Module, train_rows: RowBatches, val_rows: RowBatches) -> str:
    """Content fingerprint of a latent stage (its checkpoints: ``<checkpoint_dir>/<stage>/<fingerprint>``,
    see :func:`xoron_pipelines.training.checkpoint.configuration_dir`): the settings that change the result,
    the model's weights and the rows' content, so a rerun resumes and a change starts afresh."""
    settings = {k: v for k, v in p.model_dump(mode="json").items() if k not in RESULT_NEUTRAL_LATENT_FIELDS}
    data = tensors_digest([t for rows in (train_rows, val_rows) for _, t in sorted(rows.tensors.items())])
    return fingerprint(params=settings, stage=spec.name, weights=weights_digest(model), data=data)


def train_stage(
    model: LatentModel,
    spec: StageSpec,
    p: Any,
    parts: set[str],
    train_rows: RowBatches,
    val_rows: RowBatches,
    on_log: Callable[[int, dict], None] | None = None,
    checkpoints: CheckpointStore | None = None,
) -> dict[str, Any]:
    """Train one latent stage in place through the stage orchestrator
    (:func:`xoron_pipelines.training.stage.run_stage`, kind ``latent``); keeps the weights of the
    best evaluation. Returns a summary with the loss (and its parts) on the validation rows before
    and after and, for an adapter stage, ``prefix_ablation`` (:func:`prefix_ablation` on the
    validation rows; None for a middle stage)."""
    set_trainable(model, parts, model.cfg.num_encoder_unfrozen_layers)
    model.eval()
    view = StageModule(model, spec, p, parts)
    before = evaluate(model, spec, p, val_rows)
    per_epoch = max(1, len(train_rows) // p.gradient_accumulation_steps)
    cfg = train_config(spec, p, len(train_rows), per_epoch)
    best: dict[str, Any] = {"loss": math.inf, "state": None, "last": before}

    def eval_fn(_: nn.Module) -> dict[str, float]:
        metrics = evaluate(model, spec, p, val_rows)
        if metrics["eval_loss"] < best["loss"]:
            best["loss"], best["state"] = metrics["eval_loss"], copy.deepcopy(view.state_dict())
        best["last"] = metrics
        return metrics

    params = StageParams(
        device=p.device,  # the latent model is already there (latent.device)
        train=cfg,
        checkpoint_dir=p.checkpoint_dir,
        keep_configurations=p.keep_configurations,
        tracking=TrackingParams(enabled=False),
    )
    data = StageData(train_rows, eval_fn, loss_fn=lambda m, b: m(b))
    _, summary, _ = run_stage(
        spec.name,
        "latent",
        view,
        data,
        params,
        checkpoints=checkpoints,
        fingerprint=latent_fingerprint(p, spec, model, train_rows, val_rows),
        on_log=on_log,
        desc=f"latent/{spec.name}",
        progress=p.progress,
    )
    after = best["last"]  # the orchestrator's final evaluation
    if best["state"] is not None and best["loss"] < after["eval_loss"]:
        view.load_state_dict(best["state"])
        after = evaluate(model, spec, p, val_rows)
    if "encoder" in parts:
        model.encoder_trained = True
    model.requires_grad_(False)
    ablation = prefix_ablation(model, spec, val_rows) if spec.kind == "adapter" and val_rows.rows >= 2 else None
    return {
        "stage": spec.name,
        "trained": sorted(parts),
        "steps": summary["steps"],
        "rows": train_rows.rows,
        "batch_size": train_rows.batch_size,
        "before": before,
        "after": after,
        "train_loss": summary["train_loss"],
        "prefix_ablation": ablation,
    }
