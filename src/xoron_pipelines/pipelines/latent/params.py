"""Schema of ``conf/base/parameters_latent.yml`` (top-level key ``latent``): the latent-space
model of seed 004 -- model dimensions, training, device/optimisation, checkpointing, inference,
latent handling, datasets, pipeline control, per-stage epochs / batch sizes / sample caps, loss
weights and the ``training_phase`` diagnostic modes. The YAML file documents every key.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from xoron_pipelines.validation import Seed, StrictModel

STAGES = ("pretrain_middle", "pretrain_adapter", "finetune_middle", "finetune_adapter")
Stage = Literal["pretrain_middle", "pretrain_adapter", "finetune_middle", "finetune_adapter"]


def flash_attention_available() -> bool:
    """flash_attention_2 needs the ``flash_attn`` package and a CUDA device."""
    import torch

    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


class Params(StrictModel):
    # ---- model dimensions --------------------------------------------------------------
    latent_dim: int = Field(256, ge=1)
    latent_seq_len: int = Field(8, ge=1)
    prefix_len: int = Field(50, ge=1)
    modernbert_hidden_dim: int | None = Field(None, ge=1, description="checked against the encoder's hidden_size")
    gpt2_hidden_dim: int | None = Field(None, ge=1, description="checked against the decoder's hidden_size")
    middle_hidden_dim: int = Field(512, ge=1, description="hidden width of the compression MLP")
    middle_layers: int = Field(4, ge=1, description="layers of the compression MLP (legacy 'middle MLP layers')")
    middle_transformer_layers: int = Field(4, ge=0)
    middle_num_heads: int = Field(4, ge=1)
    middle_ffn_multiplier: float = Field(4.0, gt=0)
    middle_dropout: float = Field(0.1, ge=0, lt=1)
    middle_use_rope: bool = True
    adapter_num_heads: int = Field(4, ge=1)
    adapter_dropout: float = Field(0.1, ge=0, lt=1)
    adapter_use_rope: bool = True
    num_encoder_unfrozen_layers: int = Field(2, ge=0)
    # ---- encoder / decoder ---------------------------------------------------------------
    encoder_model: str | None = Field(None, validation_alias=AliasChoices("encoder_model", "modernbert_model"),
                                      description="null = embedding_cache.encoder_model")
    trust_remote_code: bool = False
    # ---- training ----------------------------------------------------------------------
    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(30, ge=1)
    gradient_accumulation_steps: int = Field(3, ge=1)
    max_seq_len: int = Field(512, ge=2)
    max_target_len: int = Field(256, ge=2)
    num_workers: int = Field(0, ge=0)
    prefetch_factor: int | None = Field(None, ge=1)
    num_epochs: float | None = Field(50, gt=0, description="fallback for stages without their own epochs")
    warmup_steps: int = Field(200, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    seed: Seed = 42
    logging_steps: int = Field(10, ge=1)
    progress: bool = Field(True, validation_alias=AliasChoices("progress", "use_tui"))
    # ---- device / optimisation -----------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    use_fp16: bool = True
    use_bf16: bool = True
    use_gradient_checkpointing: bool = True
    use_torch_compile: bool = False
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = \
        "reduce-overhead"
    async_checkpointing: bool = True
    # ---- attention / normalisation -------------------------------------------------------
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    use_rmsnorm: bool = True
    rmsnorm_eps: float = Field(1e-6, gt=0)
    use_prefix_rope: bool = True
    rope_base: float = Field(10000, gt=1)
    # ---- checkpointing -------------------------------------------------------------------
    checkpoint_dir: str = Field("data/06_models/latent/checkpoints", min_length=1)
    keep_configurations: int = Field(
        3, ge=1, description="per stage, keep the checkpoints of this many most recently used configurations")
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
    # ---- latent handling -----------------------------------------------------------------
    normalize_latent: bool = True
    use_stop_latent: bool = True
    stop_latent_init: Literal["random_normalized", "random"] = "random_normalized"
    stop_latent_seed: Seed = 1337
    stop_latent_cosine_threshold: float = Field(0.99, gt=-1, le=1)
    # ---- datasets ------------------------------------------------------------------------
    dataset_name: str = "synth/dialogue_summary"
    train_split: Literal["train"] = "train"
    validation_split: Literal["val"] = "val"
    test_split: Literal["val"] = "val"
    max_train_samples: int | None = Field(None, ge=1)
    wikitext_dataset: str | None = "stdlib_prose"
    arxiv_dataset: str | None = "stdlib_code"
    english_pretrain_dataset: str | None = None
    # ---- pipeline control ----------------------------------------------------------------
    pipeline_mode: Literal["two_stage_scientific", "finetune_only"] = "two_stage_scientific"
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
    pretrain_middle_max_samples_wikitext: int | None = Field(None, ge=0)
    pretrain_middle_max_samples_arxiv: int | None = Field(None, ge=0)
    pretrain_middle_max_samples_english: int | None = Field(None, ge=0)
    pretrain_adapter_max_samples_wikitext: int | None = Field(150000, ge=0)
    pretrain_adapter_max_samples_arxiv: int | None = Field(150000, ge=0)
    # ---- losses / diagnostics ------------------------------------------------------------
    latent_mse_weight: float = Field(1.0, ge=0)
    contrastive_weight: float = Field(0.1, ge=0)
    contrastive_temperature: float = Field(0.07, gt=0)
    reconstruction_weight: float = Field(1.0, ge=0)
    training_phase: Literal["normal", "phase1", "phase2", "phase3"] = "normal"

    @model_validator(mode="after")
    def _check(self) -> "Params":
        if self.latent_dim % self.middle_num_heads:
            raise ValueError(f"latent_dim={self.latent_dim} must be divisible by middle_num_heads={self.middle_num_heads}")
        if (self.middle_use_rope or self.adapter_use_rope) and self.latent_dim // self.middle_num_heads % 2:
            raise ValueError("RoPE needs an even head size: latent_dim / middle_num_heads must be even")
        if self.num_workers != 0 or self.prefetch_factor is not None:
            raise ValueError(
                "num_workers / prefetch_factor: the latent trainer builds its batches from in-memory tensors "
                "(embeddings read once from the cache), so there is no loader process to configure; set "
                "num_workers: 0 and prefetch_factor: null")
        if self.attn_implementation == "flash_attention_2" and not flash_attention_available():
            raise ValueError("attn_implementation: flash_attention_2 needs the flash_attn package and a CUDA GPU; "
                             "use sdpa (fused kernels where available) or eager")
        names = {"pretrain": self.pretrain_best_model_filename, "finetune": self.finetune_best_model_filename,
                 "handoff": self.handoff_best_model_filename}
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
        for key, name in (("wikitext", self.wikitext_dataset), ("arxiv", self.arxiv_dataset),
                          ("english", self.english_pretrain_dataset)):
            cap = getattr(self, f"{stage}_max_samples_{key}", None)
            if name is not None and cap is not None:
                caps[name] = cap
        return caps

    def stages(self) -> list[str]:
        """Stages that run, in order (pipeline_mode, run_pretraining, run_finetuning)."""
        chosen = list(STAGES) if self.pipeline_mode == "two_stage_scientific" else list(STAGES[2:])
        return [s for s in chosen if (self.run_pretraining if s.startswith("pretrain") else self.run_finetuning)]
