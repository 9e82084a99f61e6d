"""TrainConfig: every knob of the training engine, validated (pydantic, unknown keys are errors).

Field names are the ones the seed documents use (seed 000 TrainingConfig, seed 001 flags, seed 002
``train_config``, seed 004 checkpointing), so a user recognises them. A few other spellings from
those documents are accepted as aliases of the same field:

====================================  =====================================================
seed spelling                          field
====================================  =====================================================
``lr_scheduler_type`` (002)            ``lr_scheduler``
``num_train_epochs`` (002)             ``num_epochs``
``grad_clip`` (001)                    ``max_grad_norm``
``save_every`` (004)                   ``save_steps``
``use_compile`` / ``use_torch_compile``  ``compile``
``torch_compile_mode`` (004)           ``compile_mode``
``use_gradient_checkpointing`` (004)   ``gradient_checkpointing``
``fp16: true`` / ``bf16: true``        ``precision: fp16`` / ``bf16`` (both true is an error; all false: ``fp32``)
``use_8bit_optimizer: true`` (000)     ``optimizer: adamw_8bit``
====================================  =====================================================
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, StrictFloat, field_validator, model_validator

from xoron_pipelines.training.float8 import check_float8
from xoron_pipelines.validation import Seed, StrictModel

_FLAG_ALIASES = ("fp16", "bf16", "use_amp", "use_8bit_optimizer")


class TrainConfig(StrictModel):
    """Hyper-parameters and engine switches of one training run."""

    # ---- optimizer (AdamW) -------------------------------------------------------------
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    # strict=False lets a YAML list become the tuple; the two numbers stay strict floats
    betas: tuple[StrictFloat, StrictFloat] = Field((0.9, 0.999), strict=False)
    eps: float = Field(1e-8, gt=0)
    # ---- schedule ----------------------------------------------------------------------
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", validation_alias=AliasChoices("lr_scheduler", "lr_scheduler_type")
    )
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr of cosine/linear as a fraction of the peak")
    # ---- duration ----------------------------------------------------------------------
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; exclusive with num_epochs")
    num_epochs: float | None = Field(
        None,
        gt=0,
        validation_alias=AliasChoices("num_epochs", "num_train_epochs"),
        description="passes over the data; total steps = floor(num_epochs * batches / accumulation)",
    )
    # ---- batch ---------------------------------------------------------------------------
    batch_size: int = Field(1, gt=0, description="micro-batch size (sequences per forward)")
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_grad_norm: float | None = Field(
        1.0,
        ge=0,
        validation_alias=AliasChoices("max_grad_norm", "grad_clip"),
        description="clip the global grad norm to this; 0 or null disables clipping",
    )
    # ---- numerics / speed ----------------------------------------------------------------
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast on a CUDA GPU with native bf16, fp32 elsewhere (the CPU); "
        "bf16 / fp16: autocast in that dtype (fp16 with a grad scaler); fp32: none",
    )
    tf32: bool = Field(
        False,
        description="seed 002: allow TF32 matmuls / convolutions on CUDA (Ampere+) during training; "
        "the previous setting is restored after; no effect on the CPU",
    )
    gradient_checkpointing: bool = Field(
        False, validation_alias=AliasChoices("gradient_checkpointing", "use_gradient_checkpointing")
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        validation_alias=AliasChoices("compile", "use_compile", "use_torch_compile"),
        description="torch.compile the model: auto = on CUDA, off on the CPU; true / false",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", validation_alias=AliasChoices("compile_mode", "torch_compile_mode")
    )
    compile_backend: str = Field("inductor", min_length=1, description="torch.compile backend")
    float8: bool = Field(
        False,
        description="seed 002's torchao Float8 training: Linear layers (dims multiples of 16, not lm_head) run "
        "their matmuls in float8; needs a CUDA GPU of compute capability >= 8.9 and torchao (pip install torchao)",
    )
    # ---- reproducibility -----------------------------------------------------------------
    seed: Seed = 42
    deterministic: bool = False
    # ---- evaluation / guards -------------------------------------------------------------
    eval_steps: int | None = Field(None, gt=0, description="evaluate every N optimizer steps (needs eval_fn)")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="stop after this many evaluations without improvement"
    )
    early_stopping_min_delta: float = Field(0.0, ge=0, description="improvement must exceed this")
    max_nan_skips: int = Field(10, ge=0, description="steps with non-finite loss/grad skipped before the run aborts")
    # ---- checkpointing / logging ---------------------------------------------------------
    save_steps: int = Field(500, gt=0, validation_alias=AliasChoices("save_steps", "save_every"))
    keep_last_k: int = Field(3, gt=0)
    async_checkpointing: bool = False
    logging_steps: int = Field(10, gt=0)
    resume_from_checkpoint: str = Field(
        "auto",
        min_length=1,
        description="auto: continue from the newest valid checkpoint of this configuration (null means the "
        "same); never: start afresh (earlier checkpoints are set aside, not deleted); or the path "
        "of a checkpoint-<step> directory to continue from",
    )

    @field_validator("float8")
    @classmethod
    def _float8_possible(cls, value: bool) -> bool:
        """float8: true on a machine that cannot run it is an error at validation, before any work."""
        if value:
            check_float8(key="float8")
        return value

    @field_validator("resume_from_checkpoint", mode="before")
    @classmethod
    def _resume_choice(cls, value: Any) -> Any:
        """null (seed 002's default) = auto; a path must name an existing checkpoint directory."""
        if value is None:
            return "auto"
        if isinstance(value, str) and value not in ("auto", "never"):
            path = Path(value)
            if not (path / "manifest.json").is_file():
                what = "does not exist" if not path.exists() else "is not a checkpoint directory (no manifest.json)"
                raise ValueError(f"{value!r} {what}; give auto, never or the path of a checkpoint-<step> directory")
        return value

    @model_validator(mode="before")
    @classmethod
    def _map_seed_flags(cls, data: Any) -> Any:
        """Map the seeds' boolean flags (fp16/bf16/use_amp, use_8bit_optimizer) onto the enums."""
        if not isinstance(data, dict) or not any(k in data for k in _FLAG_ALIASES):
            return data
        data = dict(data)
        amp_flags = any(k in data for k in ("fp16", "bf16", "use_amp"))
        fp16, bf16 = bool(data.pop("fp16", False)), bool(data.pop("bf16", False))
        use_amp = bool(data.pop("use_amp", False))
        if fp16 and bf16:
            raise ValueError("fp16 and bf16 are both true; choose one (or set precision)")
        flag = "fp16" if fp16 else "bf16" if (bf16 or use_amp) else None
        if flag:
            if data.get("precision", flag) != flag:
                raise ValueError(f"precision={data['precision']!r} contradicts {flag}: true")
            data["precision"] = flag
        elif amp_flags:  # the seeds' flags all false: no mixed precision
            data.setdefault("precision", "fp32")
        if data.pop("use_8bit_optimizer", False):
            if data.get("optimizer", "adamw_8bit") != "adamw_8bit":
                raise ValueError(f"optimizer={data['optimizer']!r} contradicts use_8bit_optimizer: true")
            data["optimizer"] = "adamw_8bit"
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set warmup_steps or warmup_ratio, not both")
        if (self.max_steps is None) == (self.num_epochs is None):
            raise ValueError("set exactly one of max_steps and num_epochs")
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError("early_stopping_patience needs eval_steps")
        if self.warmup_steps is not None and self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be less than max_steps ({self.max_steps}): "
                "the learning rate would never reach its peak"
            )
        return self

    # ---- derived values ----------------------------------------------------------------
    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps of the run: ``max_steps``, or ``num_epochs`` over the data."""
        if self.max_steps is not None:
            return self.max_steps
        steps = math.floor(self.num_epochs * batches_per_epoch / self.gradient_accumulation_steps)
        if steps < 1:
            raise ValueError(
                f"num_epochs={self.num_epochs} over {batches_per_epoch} batches with "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} gives no optimizer step"
            )
        return steps

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps: ``warmup_steps``, or ``ceil(warmup_ratio * total_steps)``, else 0.
        Raises ValueError when ``warmup_steps`` is not below ``total_steps`` (a ``num_epochs`` run,
        whose length is known only once the data is)."""
        if self.warmup_steps is not None:
            if self.warmup_steps >= total_steps:
                raise ValueError(
                    f"train.warmup_steps ({self.warmup_steps}) must be less than the run's "
                    f"{total_steps} optimizer steps (num_epochs={self.num_epochs})"
                )
            return self.warmup_steps
        if self.warmup_ratio is not None:
            return math.ceil(self.warmup_ratio * total_steps)
        return 0

    @property
    def clip_enabled(self) -> bool:
        return bool(self.max_grad_norm)
