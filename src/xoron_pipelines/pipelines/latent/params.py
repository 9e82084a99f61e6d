"""Schema of ``conf/base/parameters_latent.yml`` (top-level key ``latent``): the latent-space
model of seed 004 -- model dimensions (the architecture knobs are declared once, in
:class:`xoron_pipelines.latent.model.LatentArchitecture`), training, device/optimisation, checkpointing, inference,
latent handling, datasets, pipeline control, per-stage epochs / batch sizes / sample caps, loss
weights and the ``training_phase`` diagnostic modes. The YAML file documents every key.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import AliasChoices, Field, model_validator

from xoron_pipelines.device import DeviceSpec
from xoron_pipelines.latent.model import LatentArchitecture
from xoron_pipelines.validation import Seed

STAGES = ("pretrain_middle", "pretrain_adapter", "finetune_middle", "finetune_adapter")
Stage = Literal["pretrain_middle", "pretrain_adapter", "finetune_middle", "finetune_adapter"]


def flash_attention_available() -> bool:
    """flash_attention_2 needs the ``flash_attn`` package and a CUDA device."""
    import torch

    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def _seed_alias(name: str, seed: str) -> AliasChoices:
    """The field's own name first, seed 004's spelling accepted too."""
    return AliasChoices(name, seed)


#: pipeline_mode values: seed 004's name of the mode that runs all four stages -> ours
PIPELINE_MODE_ALIASES = {"two_stage_scientific": "four_stage"}


class Params(LatentArchitecture):
    """The ``latent`` group: the architecture knobs (:class:`LatentArchitecture`, shared with the
    saved model config) plus training, data, inference and pipeline control. Seed 004's names for
    things this project does differently stay accepted (``validation_alias``): the encoder is
    MiniLM, not ModernBERT; the decoder is ours, not GPT-2/Gemma; the default mode runs four stages."""

    # ---- model dimensions (the rest: LatentArchitecture) ---------------------------------
    encoder_hidden_dim: int | None = Field(
        None,
        ge=1,
        validation_alias=_seed_alias("encoder_hidden_dim", "modernbert_hidden_dim"),
        description="checked against the encoder's hidden_size",
    )
    decoder_hidden_dim: int | None = Field(
        None,
        ge=1,
        validation_alias=_seed_alias("decoder_hidden_dim", "gpt2_hidden_dim"),
        description="checked against the decoder's hidden_size",
    )
    # ---- encoder / decoder ---------------------------------------------------------------
    encoder_model: str | None = Field(
        None,
        validation_alias=AliasChoices("encoder_model", "modernbert_model"),
        description="null = embedding_cache.encoder_model",
    )
    # ---- training ----------------------------------------------------------------------
    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(30, ge=1)
    gradient_accumulation_steps: int = Field(3, ge=1)
    max_seq_len: int = Field(512, ge=2)
    max_target_len: int = Field(256, ge=2)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes serving the stage batches")
    prefetch_factor: int | None = Field(None, ge=1, description="batches prefetched per worker (num_workers > 0)")
    num_epochs: float | None = Field(50, gt=0, description="fallback for stages without their own epochs")
    warmup_steps: int = Field(200, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    seed: Seed = 42
    logging_steps: int = Field(10, ge=1)
    progress: bool = Field(True, validation_alias=AliasChoices("progress", "use_tui"))
    # ---- device / optimisation -----------------------------------------------------------
    device: DeviceSpec = "auto"
    use_fp16: bool = True
    use_bf16: bool = True
    use_gradient_checkpointing: bool = True
    use_torch_compile: bool = False
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "reduce-overhead"
    )
    async_checkpointing: bool = True
    # ---- checkpointing -------------------------------------------------------------------
    checkpoint_dir: str | None = Field(
        "data/06_models/latent/checkpoints",
        min_length=1,
        description="null: the catalog's latent_<stage>.checkpoints store; a path replaces its root",
    )
    keep_configurations: int = Field(
        3, ge=1, description="per stage, keep the checkpoints of this many most recently used configurations"
    )
    save_every: int = Field(500, ge=1)
    pretrain_best_model_filename: str = Field("best_model_pretrain.safetensors", pattern=r"^[^/\\]+\.safetensors$")
    finetune_best_model_filename: str = Field("best_model_finetune.safetensors", pattern=r"^[^/\\]+\.safetensors$")
    handoff_best_model_filename: str = Field("best_model.safetensors", pattern=r"^[^/\\]+\.safetensors$")
    # ---- inference -----------------------------------------------------------------------
    temperature: float = Field(0.7, gt=0)
    max_generation_length: int = Field(256, ge=1)
    do_sample: bool = True
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(50, ge=0)
    inference_examples: int = Field(4, ge=0, description="validation sources turned into text by the node")
    # ---- datasets ------------------------------------------------------------------------
    dataset_name: str = Field(
        "synth/dialogue_summary",
        min_length=1,
        description="the pairs: synth/<type>, a local path or a Hub id (latent/sources.py)",
    )
    train_split: str = Field("train", min_length=1)
    validation_split: str = Field("validation", min_length=1)
    test_split: str = Field("test", min_length=1)
    max_train_samples: int | None = Field(None, ge=1)
    prose_dataset: str | None = Field("stdlib_prose", validation_alias=_seed_alias("prose_dataset", "wikitext_dataset"))
    code_dataset: str | None = Field("stdlib_code", validation_alias=_seed_alias("code_dataset", "arxiv_dataset"))
    english_pretrain_dataset: str | None = None
    # ---- pipeline control ----------------------------------------------------------------
    pipeline_mode: Literal["four_stage", "finetune_only"] = "four_stage"
    run_preprocessing: bool = True
    run_pretraining: bool = True
    run_finetuning: bool = True
    freeze_encoder_compression_in_pipeline: bool = True
    adapter_pretrain_use_middle: bool = False
    # ---- stage epochs / batch sizes / sample caps ------------------------------------------
    pretrain_middle_epochs: float | None = Field(6, gt=0)
    pretrain_adapter_epochs: float | None = Field(4, gt=0)
    finetune_middle_epochs: float | None = Field(2, gt=0)
    finetune_adapter_epochs: float | None = Field(2, gt=0)
    pretrain_middle_batch_size: int | None = Field(None, ge=1)
    pretrain_adapter_batch_size: int | None = Field(None, ge=1)
    finetune_middle_batch_size: int | None = Field(None, ge=1)
    finetune_adapter_batch_size: int | None = Field(None, ge=1)
    pretrain_middle_max_samples: int | None = Field(None, ge=1)
    pretrain_adapter_max_samples: int | None = Field(None, ge=1)
    finetune_middle_max_samples: int | None = Field(None, ge=1)
    finetune_adapter_max_samples: int | None = Field(None, ge=1)
    pretrain_middle_max_samples_prose: int | None = Field(
        None,
        ge=0,
        validation_alias=_seed_alias("pretrain_middle_max_samples_prose", "pretrain_middle_max_samples_wikitext"),
    )
    pretrain_middle_max_samples_code: int | None = Field(
        None,
        ge=0,
        validation_alias=_seed_alias("pretrain_middle_max_samples_code", "pretrain_middle_max_samples_arxiv"),
    )
    pretrain_middle_max_samples_english: int | None = Field(None, ge=0)
    pretrain_adapter_max_samples_prose: int | None = Field(
        150000,
        ge=0,
        validation_alias=_seed_alias("pretrain_adapter_max_samples_prose", "pretrain_adapter_max_samples_wikitext"),
    )
    pretrain_adapter_max_samples_code: int | None = Field(
        150000,
        ge=0,
        validation_alias=_seed_alias("pretrain_adapter_max_samples_code", "pretrain_adapter_max_samples_arxiv"),
    )
    # ---- losses / diagnostics ------------------------------------------------------------
    latent_mse_weight: float = Field(1.0, ge=0)
    contrastive_weight: float = Field(0.1, ge=0)
    contrastive_temperature: float = Field(0.07, gt=0)
    reconstruction_weight: float = Field(1.0, ge=0)
    training_phase: Literal["normal", "phase1", "phase2", "phase3"] = "normal"

    @model_validator(mode="before")
    @classmethod
    def _seed_spellings(cls, data: Any) -> Any:
        """Seed 004's pipeline_mode value -> ours. Where both spellings of a knob are given, the
        later one in the mapping wins: a ``--params`` override is merged after the conf file's
        keys, so ``--params latent.arxiv_dataset=x`` overrides the YAML's ``code_dataset``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for field in cls.model_fields.values():
            if isinstance(field.validation_alias, AliasChoices):
                given = [k for k in data if k in field.validation_alias.choices]
                for k in given[:-1]:
                    del data[k]
        mode = data.get("pipeline_mode")
        if mode in PIPELINE_MODE_ALIASES:
            data["pipeline_mode"] = PIPELINE_MODE_ALIASES[mode]
        return data

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.latent_dim % self.middle_num_heads:
            raise ValueError(
                f"latent_dim={self.latent_dim} must be divisible by middle_num_heads={self.middle_num_heads}"
            )
        if (self.middle_use_rope or self.adapter_use_rope) and self.latent_dim // self.middle_num_heads % 2:
            raise ValueError("RoPE needs an even head size: latent_dim / middle_num_heads must be even")
        if self.num_workers == 0 and self.prefetch_factor is not None:
            raise ValueError(
                f"prefetch_factor={self.prefetch_factor} needs worker processes (num_workers > 0); "
                "set prefetch_factor: null or num_workers >= 1"
            )
        if self.attn_implementation == "flash_attention_2" and not flash_attention_available():
            raise ValueError(
                "attn_implementation: flash_attention_2 needs the flash_attn package and a CUDA GPU; "
                "use sdpa (fused kernels where available) or eager"
            )
        names = {
            "pretrain": self.pretrain_best_model_filename,
            "finetune": self.finetune_best_model_filename,
            "handoff": self.handoff_best_model_filename,
        }
        if len(set(names.values())) < 3:
            raise ValueError(f"the three *_best_model_filename values must differ, got {names}")
        return self

    # ---- derived -------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """bf16 when use_bf16 (preferred: no loss scaling), else fp16 when use_fp16, else fp32."""
        return "bf16" if self.use_bf16 else "fp16" if self.use_fp16 else "fp32"

    def stage_value(self, stage: str, what: str):
        """A stage's own ``<stage>_<what>`` (epochs, batch_size, max_samples) or the global one."""
        own = getattr(self, f"{stage}_{what}")
        if own is not None:
            return own
        return {"epochs": self.num_epochs, "batch_size": self.batch_size, "max_samples": None}[what]

    def dataset_caps(self, stage: str) -> dict[str, int]:
        """Per-source caps of a pretraining stage: ledger source name -> max rows."""
        caps = {}
        for key, name in (
            ("prose", self.prose_dataset),
            ("code", self.code_dataset),
            ("english", self.english_pretrain_dataset),
        ):
            cap = getattr(self, f"{stage}_max_samples_{key}", None)
            if name is not None and cap is not None:
                caps[name] = cap
        return caps

    def stages(self) -> list[str]:
        """Stages that run, in order (pipeline_mode, run_pretraining, run_finetuning)."""
        chosen = list(STAGES) if self.pipeline_mode == "four_stage" else list(STAGES[2:])
        return [s for s in chosen if (self.run_pretraining if s.startswith("pretrain") else self.run_finetuning)]

    def pair_splits(self) -> tuple[str, str, str]:
        """(train_split, validation_split, test_split) of the pairs' source."""
        return self.train_split, self.validation_split, self.test_split
