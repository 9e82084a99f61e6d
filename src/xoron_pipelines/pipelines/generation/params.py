"""Schema of ``conf/base/parameters_generation.yml`` (the ``generation`` group): seed 000's
generation knobs (``generation_*`` for images, ``generation_video_*`` for video) with CPU-sized
defaults, seed 000's multi-scale block (``multi_scale``: :class:`MultiScaleConfig`, the sampler the
multimodal stages use too), the training loop, evaluation and the generation node."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, model_validator

from xoron_pipelines.data.multiscale import MultiScaleConfig, image_sizes, video_sizes
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
    prediction: Literal["velocity", "sample"] = "velocity"
    min_sigma: float = Field(0.05, gt=0, lt=1)
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


def _check_divisible(sizes, unit: int, what: str, why: str) -> None:
    for h, w in sizes:
        if h % unit or w % unit:
            raise ValueError(f"{what} {h}x{w} is not divisible by {unit} ({why})")


class GenerationMultiScale(MultiScaleConfig):
    """:class:`MultiScaleConfig` with the generation stages' defaults: off, i.e. image 32x32 and
    video 8 frames of 16x16 (the sizes the README's figures were measured at); when on, seed 000's
    shapes at CPU sizes, 8..32 frames as the seed and the issue have them."""

    use_multi_scale: bool = False
    video_base_size: int = Field(default=16, ge=1)
    video_frame_scales: list[int] = Field(default_factory=lambda: [8, 16, 24, 32])
    video_frame_scale_probs: list[float] = Field(default_factory=lambda: [0.4, 0.3, 0.2, 0.1])
    video_min_frames: int = Field(default=8, ge=1)
    video_max_frames: int = Field(default=32, ge=1)
    video_base_frames: int = Field(default=8, ge=1)


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
    sample_size: Size = Field(default_factory=lambda: [32, 32])
    model: _Stage = Field(default_factory=_Stage)

    def unit(self) -> int:
        return self.model.patch_size * (2 if self.generation_latent_space == "latent" else 1)

    @model_validator(mode="after")
    def _check(self):
        if self.model.prediction == "sample" and not self.generation_use_flow_matching:
            raise ValueError("model.prediction: sample needs generation_use_flow_matching: true")
        _check_divisible([self.sample_size], self.unit(), "sample_size", "patch_size x autoencoder downsampling")
        return self


class VideoGen(StrictModel):
    generation_video_num_experts: PositiveInt = 4
    generation_video_use_temporal_moe: bool = True
    generation_video_use_3d_rope: bool = True
    generation_video_use_flow_matching: bool = True
    generation_video_cfg_scale: float = Field(3.0, ge=1)
    generation_inference_steps: PositiveInt = 20
    causal: bool = True
    frame_noise_correlation: float = Field(0.0, ge=0, lt=1)
    frame_by_frame: bool = False
    model: _Stage = Field(default_factory=_Stage)

    @model_validator(mode="after")
    def _check(self):
        if self.frame_noise_correlation > 0 and not self.generation_video_use_flow_matching:
            raise ValueError("frame_noise_correlation needs generation_video_use_flow_matching: true")
        if self.frame_by_frame and not (self.causal and self.generation_video_use_flow_matching):
            raise ValueError("frame_by_frame needs causal: true and generation_video_use_flow_matching: true")
        if self.model.prediction == "sample" and not self.generation_video_use_flow_matching:
            raise ValueError("model.prediction: sample needs generation_video_use_flow_matching: true")
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
    multi_scale: GenerationMultiScale = Field(default_factory=GenerationMultiScale)
    image_gen: ImageGen = Field(default_factory=ImageGen)
    video_gen: VideoGen = Field(default_factory=VideoGen)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    generate: Generate = Field(default_factory=Generate)

    @model_validator(mode="after")
    def _check_sizes(self):
        """Every size the stages train on (those :func:`image_sizes` / :func:`video_sizes` return:
        the scales, or the base sizes when ``use_multi_scale`` is false) fits the patch grid."""
        ms, on = self.multi_scale, self.multi_scale.use_multi_scale
        latent = self.image_gen.generation_latent_space == "latent"
        _check_divisible(
            image_sizes(ms),
            self.image_gen.unit(),
            "multi_scale.image_scales" if on else "multi_scale.image_base_size",
            "image_gen.model.patch_size" + (" x 2, the autoencoder's downsampling" if latent else ""),
        )
        _check_divisible(
            video_sizes(ms)[1],
            self.video_gen.model.patch_size,
            "multi_scale.video_scales" if on else "multi_scale.video_base_size",
            "video_gen.model.patch_size",
        )
        return self
