"""LoRA fine-tuning through ``peft``: settings, target resolution, LoRA+ groups, merge.

Seed 000's LoRA knobs (``use_lora``, ``lora_r``, ``lora_alpha``, ``lora_dropout``,
``lora_target_modules``, ``train_lora_only``, ``use_rslora``, ``use_dora``, ``use_lora_plus``,
``lora_plus_lr_ratio``) are the fields of :class:`LoraSettings` (seed spellings accepted as
aliases). Where the public code fell short, ours differs:

* **Targets.** The seed lists ``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj``,
  but MLA attention has no ``k_proj`` / ``v_proj`` (and with ``q_lora_rank`` no ``q_proj``): the
  public code silently adapted nothing there. Here ``target_modules: null`` (default) picks every
  projection the model actually has -- MHA/GQA ``q_proj, k_proj, v_proj, o_proj``; MLA ``q_proj``
  or ``q_a_proj, q_b_proj``, ``kv_a_proj_with_mqa, kv_b_proj, o_proj`` -- plus ``gate_proj,
  up_proj, down_proj`` of the dense MLPs (MoE shared experts included). An explicit list must
  name modules that exist: a name matching no ``nn.Linear`` raises, listing what exists.
  Routed MoE experts are stacked ``nn.Parameter`` tensors, not ``nn.Linear`` modules, so LoRA
  does not adapt them (nor PEER's expert tables, nor ``lm_head`` unless named).
* **DoRA** uses peft's implementation, whose magnitude vector starts at the row norms ``||W||``
  of the base weight (the public code started it at 1, rescaling every adapted layer at step 0).
* **rsLoRA** scales the update by ``alpha / sqrt(r)`` instead of ``alpha / r``.
* **LoRA+**: :func:`lora_plus_param_groups` gives ``lora_B`` matrices ``lr * lora_plus_lr_ratio``.

``train_lora_only: false`` (the seed default) trains the base weights too, alongside the
adapters. :func:`merge_lora` folds the adapters into the base weights at the end of a stage and
returns the plain model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import AliasChoices, Field
from torch import nn

from xoron_pipelines.validation import StrictModel

log = logging.getLogger(__name__)

#: attention projections of every attention type (MHA/GQA, then MLA), in module order
ATTENTION_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "q_a_proj",
    "q_b_proj",
    "kv_a_proj_with_mqa",
    "kv_b_proj",
    "o_proj",
)
#: dense SwiGLU MLP projections (also the MoE shared experts)
MLP_TARGETS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")


class LoraSettings(StrictModel):
    """LoRA / DoRA / rsLoRA / LoRA+ settings of a fine-tuning stage (seed 000 names as aliases)."""

    enabled: bool = Field(True, validation_alias=AliasChoices("enabled", "use_lora"))
    r: int = Field(32, gt=0, validation_alias=AliasChoices("r", "lora_r"))
    alpha: float = Field(64, gt=0, validation_alias=AliasChoices("alpha", "lora_alpha"))
    dropout: float = Field(0.05, ge=0, lt=1, validation_alias=AliasChoices("dropout", "lora_dropout"))
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        validation_alias=AliasChoices("target_modules", "lora_target_modules"),
        description="module names to adapt; null = every attention and dense-MLP projection the model has",
    )
    use_rslora: bool = True
    use_dora: bool = False
    train_lora_only: bool = False
    use_lora_plus: bool = True
    lora_plus_lr_ratio: float = Field(4.0, gt=0, description="LoRA+: lr of the B matrices = ratio x lr")

    @property
    def b_lr_ratio(self) -> float:
        """The learning-rate multiplier of the B matrices (1 when LoRA+ is off)."""
        return self.lora_plus_lr_ratio if self.use_lora_plus else 1.0


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _matches(target: str, names: Sequence[str]) -> bool:
    """peft's rule: a target matches a module whose full name equals it or ends with ``.target``."""
    return any(name == target or name.endswith(f".{target}") for name in names)


def resolve_targets(model: nn.Module, requested: Sequence[str] | None = None) -> list[str]:
    """The module names LoRA adapts in ``model``.

    ``requested=None``: the attention and dense-MLP projections present in the model (see the
    module doc). Otherwise every requested name must match an ``nn.Linear`` of the model, else
    ``ValueError`` naming the missing ones and listing the linear layers that exist.
    """
    names = _linear_names(model)
    if requested is None:
        targets = [t for t in ATTENTION_TARGETS + MLP_TARGETS if _matches(t, names)]
        if not targets:
            raise ValueError(
                "the model has none of the default LoRA target projections "
                f"{list(ATTENTION_TARGETS + MLP_TARGETS)}; set target_modules"
            )
        return targets
    missing = [t for t in requested if not _matches(t, names)]
    if missing:
        existing = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise ValueError(
            f"LoRA target_modules {missing} match no nn.Linear of this model "
            f"(attention_type={getattr(getattr(model, 'config', None), 'attention_type', '?')}); "
            f"its linear layers are {existing}"
        )
    return list(dict.fromkeys(requested))


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (a ``peft.PeftModel``); ``model`` unchanged when disabled.

    With ``train_lora_only`` only the adapter weights train; otherwise the base weights that were
    trainable before are unfrozen again after peft froze them, so both train (seed 000 default).
    """
    if not settings.enabled:
        return model
    targets = resolve_targets(model, settings.target_modules)
    was_trainable = [p for p in model.parameters() if p.requires_grad]
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    if not settings.train_lora_only:
        for param in was_trainable:
            param.requires_grad_(True)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info(
        "LoRA r=%d alpha=%g on %s (rslora=%s, dora=%s): %d of %d parameters train",
        settings.r,
        settings.alpha,
        targets,
        settings.use_rslora,
        settings.use_dora,
        trainable,
        total,
    )
    return peft_model


def is_lora_b(name: str) -> bool:
    """Whether parameter ``name`` is a LoRA B matrix (``lora_B`` or ``lora_embedding_B``)."""
    return ".lora_B." in name or ".lora_embedding_B." in name


def lora_plus_param_groups(model: nn.Module, lr: float, ratio: float, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups for LoRA+ (Hayou et al. 2024; as ``peft.optimizers.create_loraplus_optimizer``).

    LoRA B matrices get ``lr * ratio``; every other trainable parameter (A matrices, DoRA
    magnitudes, base weights when they train) gets ``lr``. Matrices (``ndim >= 2``) get
    ``weight_decay``, 1-d parameters (norms, DoRA magnitudes) none. Each group carries its own
    ``lr``; an lr scheduler multiplies all of them by the same factor. Empty groups are dropped.
    """
    groups = {(b, decay): [] for b in (False, True) for decay in (True, False)}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[(is_lora_b(name), param.ndim >= 2)].append(param)
    return [
        {"params": params, "lr": lr * ratio if b else lr, "weight_decay": weight_decay if decay else 0.0}
        for (b, decay), params in groups.items()
        if params
    ]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and return the plain base model (all parameters
    trainable again, ready for the next stage or ``save_pretrained``); other models unchanged."""
    if not isinstance(model, PeftModel):
        return model
    merged = model.merge_and_unload()
    merged.requires_grad_(True)
    return merged


__all__ = [
    "ATTENTION_TARGETS",
    "MLP_TARGETS",
    "LoraSettings",
    "apply_lora",
    "is_lora_b",
    "lora_plus_param_groups",
    "merge_lora",
    "resolve_targets",
]
