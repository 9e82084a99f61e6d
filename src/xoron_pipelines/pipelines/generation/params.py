"""Schema of ``conf/base/parameters_generation.yml`` (the ``generation`` group): seed 000's
generation knobs (``generation_*`` for images, ``generation_video_*`` for video) with CPU-sized
defaults, the multi-scale lists, the training loop, evaluation and the generation node."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, model_validator

from xoron_pipelines.validation import Seed, StrictModel

#: (H, W)
Size = Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]


class _Stage(StrictModel):
    """What image and video generators share: denoiser size, training loop, sampling preview."""

    enabled: bool = True
    hidden_size: PositiveInt = 96
    depth: PositiveInt = 4
    num_heads: PositiveInt = 4
    patch_size: PositiveInt = 4
    mlp_ratio: float = Field(2.0, gt=0)
    experts_per_token: PositiveInt = 2
    cfg_dropout: float = Field(0.1, ge=0, lt=1)
    steps: PositiveInt = 600
    batch_size: PositiveInt = 32
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    ema_decay: float = Field(0.0, ge=0, lt=1)
    t_mean: float = 0.0
    t_std: float = Field(1.0, gt=0)
    train_items: int = Field(0, ge=0)
    sample_every: PositiveInt = 200
    preview_prompts: PositiveInt = 8

    @model_validator(mode="after")
    def _check(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) < 6:
            raise ValueError("hidden_size / num_heads must be at least 6 (3-axis rotary slices)")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be shorter than steps {self.steps}")
        return self


def _check_scales(scales, probs, unit: int, what: str) -> None:
    if probs is not None and (len(probs) != len(scales) or abs(sum(probs) - 1) > 1e-6):
        raise ValueError(f"{what}_probs must have one probability per scale and sum to 1")
    for h, w in scales:
        if h % unit or w % unit:
            raise ValueError(f"{what} {h}x{w} is not divisible by {unit} (patch_size x autoencoder downsampling)")


class ImageGen(StrictModel):
    generation_latent_space: Literal["pixel", "latent"] = "pixel"
    generation_latent_channels: PositiveInt = 4
    generation_base_channels: PositiveInt = 32
    generation_vae_path: str | None = None
    autoencoder_steps: int = Field(400, ge=0)
    autoencoder_lr: float = Field(2e-3, gt=0)
    generation_num_experts: PositiveInt = 4
    generation_use_dual_stream: bool = True
    generation_use_flow_matching: bool = True
    generation_inference_steps: PositiveInt = 20
    generation_cfg_scale: float = Field(3.0, ge=1)
    image_scales: list[Size] = Field(default_factory=lambda: [[32, 32]], min_length=1)
    image_scale_probs: list[float] | None = None
    sample_size: Size = Field(default_factory=lambda: [32, 32])
    model: _Stage = Field(default_factory=_Stage)

    def unit(self) -> int:
        return self.model.patch_size * (2 if self.generation_latent_space == "latent" else 1)

    @model_validator(mode="after")
    def _check(self):
        _check_scales(self.image_scales, self.image_scale_probs, self.unit(), "image_scales")
        _check_scales([self.sample_size], None, self.unit(), "sample_size")
        return self


class VideoGen(StrictModel):
    generation_video_num_experts: PositiveInt = 4
    generation_video_use_temporal_moe: bool = True
    generation_video_use_3d_rope: bool = True
    generation_video_use_flow_matching: bool = True
    generation_video_cfg_scale: float = Field(3.0, ge=1)
    generation_inference_steps: PositiveInt = 20
    causal: bool = True
    frames: int = Field(8, ge=2, le=32)
    max_frames: int = Field(32, ge=2, le=32)
    size: Size = Field(default_factory=lambda: [32, 32])
    model: _Stage = Field(default_factory=_Stage)

    @model_validator(mode="after")
    def _check(self):
        _check_scales([self.size], None, self.model.patch_size, "size")
        if self.frames > self.max_frames:
            raise ValueError(f"frames {self.frames} exceed max_frames {self.max_frames}")
        return self


class Evaluation(StrictModel):
    num_prompts: PositiveInt = 64
    seed: Seed = 1234
    fid_items: PositiveInt = 128


class Generate(StrictModel):
    image_prompts: list[str] = Field(default_factory=list)
    video_prompts: list[str] = Field(default_factory=list)
    seed: Seed = 7


class Params(StrictModel):
    seed: Seed = 0
    max_prompt_tokens: PositiveInt = 32
    image_diffusion_loss_weight: float = Field(0.1, gt=0)
    video_diffusion_loss_weight: float = Field(0.1, gt=0)
    image_gen: ImageGen = Field(default_factory=ImageGen)
    video_gen: VideoGen = Field(default_factory=VideoGen)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    generate: Generate = Field(default_factory=Generate)
