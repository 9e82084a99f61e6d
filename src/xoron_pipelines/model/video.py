"""Video encoder (seed 000's Video configuration, seed 003's "3D-RoPE + Temporal MoE + 3D causal
attention"): clips (B, T, 3, H, W) in [0, 1] -> token features for the projector.

* Tubelet embedding: non-overlapping ``tubelet_size x patch_size x patch_size`` blocks, one linear
  map each, give tokens on a (t, y, x) grid of ``T / tubelet_size x H / patch x W / patch``
  (row-major: time, then row, then column). A frame count that is not a multiple of
  ``tubelet_size`` is padded at the end by repeating the last frame (later, so causality holds).
* Positions: 3D-RoPE (``use_video_3d_rope``) rotates q and k by the (t, y, x) coordinates, the head
  dimension split across the three axes (``model/rope.py``); relative, so any frame count and
  resolution work without tables. Otherwise learned factorised embeddings ``E_t[t] + E_y[y] +
  E_x[x]`` are added to the tokens (tables of ``max_frames / tubelet_size`` and
  ``max_size / patch_size`` rows).
* 3D causal attention (``causal_time``): a token attends to every token of its own and earlier
  time steps, never a later one (block-causal boolean ``attn_mask`` for SDPA).
* Temporal MoE (``use_video_temporal_moe``): the feed-forward block of every layer is
  ``num_video_experts`` routed SwiGLU experts (``model/moe.py``'s router, experts, aux-loss-free
  bias balancing and optional sequence-wise aux loss). The router sees the token plus a projected
  *motion feature*: the token minus the token at the same (y, x) one time step earlier (zero at
  the first step), so routing changes when only motion changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from xoron_pipelines.model.mlp import MLP
from xoron_pipelines.model.moe import MoE, recomputing, sequence_balance_loss
from xoron_pipelines.model.norm import RMSNorm
from xoron_pipelines.model.rope import apply_axial_rope, axial_rope_cos_sin, axial_rope_freqs, grid_coords
from xoron_pipelines.validation import StrictModel


# --- EncoderOutput: moves to model/vision.py at merge ------------------------------------------
@dataclass
class EncoderOutput:
    """What every media encoder returns: ``features`` (B, N, hidden_size), ``mask`` (B, N) bool
    (True = valid) or None when every token is valid, ``extras`` (encoder-specific tensors)."""

    features: torch.Tensor
    mask: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


# --- end EncoderOutput ---------------------------------------------------------------------------


class VideoEncoderConfig(StrictModel):
    """Video encoder knobs; the defaults are a preset that trains on a 2-core CPU in minutes
    (seed 000's sizes: ``num_video_encoder_layers: 4``, larger ``hidden_size``)."""

    hidden_size: int = Field(96, ge=8)
    num_heads: int = Field(4, ge=1)
    num_video_encoder_layers: int = Field(2, ge=1)
    intermediate_size: int = Field(192, ge=1)  # dense SwiGLU width (use_video_temporal_moe false)
    patch_size: int = Field(8, ge=1)  # spatial patch (pixels per side)
    tubelet_size: int = Field(2, ge=1)  # frames per token (temporal patch)
    causal_time: bool = True  # 3D causal attention: no token sees a later time step
    use_video_3d_rope: bool = True  # false: learned factorised (t, y, x) position embeddings
    rope_theta: float = Field(10000.0, gt=0)
    max_frames: int = Field(32, ge=1)  # learned-position tables only (seed 000's video_max_frames)
    max_size: int = Field(384, ge=1)  # learned-position tables only, pixels (video_max_size)
    use_video_temporal_moe: bool = True
    num_video_experts: int = Field(4, ge=1)
    num_video_experts_per_tok: int = Field(2, ge=1)  # top-k
    expert_intermediate_size: int = Field(96, ge=1)
    bias_update_rate: float = Field(0.001, ge=0)  # aux-loss-free balancing (update_moe_bias)
    aux_loss_coef: float = Field(0.0, ge=0)  # sequence-wise balance loss, in extras["aux_loss"]
    norm_eps: float = Field(1e-6, gt=0)
    initializer_range: float = Field(0.02, gt=0)
    kernels: Literal["auto", "triton", "torch"] = "auto"

    @model_validator(mode="after")
    def _consistent(self) -> VideoEncoderConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        if self.use_video_3d_rope and (head_dim % 2 or head_dim < 6):
            raise ValueError(f"3D-RoPE needs an even head dim >= 6 (hidden_size / num_heads), got {head_dim}")
        if self.num_video_experts_per_tok > self.num_video_experts:
            raise ValueError(
                f"num_video_experts_per_tok {self.num_video_experts_per_tok} exceeds "
                f"num_video_experts {self.num_video_experts}"
            )
        return self


def _moe_config(cfg: VideoEncoderConfig) -> SimpleNamespace:
    """The attributes ``model/moe.py`` reads, from the video knobs (softmax router, no shared experts)."""
    return SimpleNamespace(
        hidden_size=cfg.hidden_size,
        num_experts=cfg.num_video_experts,
        num_experts_per_tok=cfg.num_video_experts_per_tok,
        expert_intermediate_size=cfg.expert_intermediate_size,
        num_shared_experts=0,
        router_scoring="softmax",
        norm_topk_prob=True,
        routed_scaling_factor=1.0,
        bias_update_rate=cfg.bias_update_rate,
        aux_loss_coef=cfg.aux_loss_coef,
        initializer_range=cfg.initializer_range,
        kernels=cfg.kernels,
        intermediate_size=cfg.intermediate_size,
    )


class TemporalMoE(MoE):
    """:class:`~xoron_pipelines.model.moe.MoE` whose router input is ``x + motion_proj(x_t - x_{t-1})``
    (same spatial location, previous time step; zero at t = 0). The experts see ``x`` itself.
    After ``forward``, ``router_probs`` holds the softmax scores (B, N, E) and ``aux_loss`` the
    balance loss; token counts and :meth:`update_bias` work as in the LLM's MoE."""

    def __init__(self, cfg: VideoEncoderConfig) -> None:
        super().__init__(_moe_config(cfg))
        self.motion_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.router_probs = torch.zeros(())

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        batch, n, hidden = x.shape
        t = grid[0]
        frames = x.view(batch, t, n // t, hidden)
        previous = torch.cat((frames[:, :1], frames[:, :-1]), dim=1)
        motion = (frames - previous).view(batch, n, hidden)
        scores, weights, indices = self.gate((x + self.motion_proj(motion)).reshape(-1, hidden))
        output = self.experts(x.reshape(-1, hidden), indices, weights)
        if self.training and not recomputing():
            self._count_tokens(indices)
        self.router_probs = scores.view(batch, n, -1)
        if self.aux_loss_coef > 0:
            loss = sequence_balance_loss(self.router_probs, indices.view(batch, n, -1), self.num_experts)
            self.aux_loss = self.aux_loss_coef * loss
        else:
            self.aux_loss = scores.new_zeros(())
        return output.view(batch, n, hidden)


class VideoBlock(nn.Module):
    """Pre-norm transformer block: 3D (block-causal) attention with 3D-RoPE, then MLP or temporal MoE."""

    def __init__(self, cfg: VideoEncoderConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, impl=cfg.kernels)
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, impl=cfg.kernels)
        self.moe = TemporalMoE(cfg) if cfg.use_video_temporal_moe else None
        self.mlp = None if cfg.use_video_temporal_moe else MLP(_moe_config(cfg))

    def forward(self, x: torch.Tensor, grid, rope, attn_mask: torch.Tensor | None) -> torch.Tensor:
        batch, n, hidden = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(batch, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            cos, sin, inv = rope
            q, k = apply_axial_rope(q, cos, sin, inv), apply_axial_rope(k, cos, sin, inv)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.out_proj(attn.transpose(1, 2).reshape(batch, n, hidden))
        h = self.mlp_norm(x)
        return x + (self.moe(h, grid) if self.moe is not None else self.mlp(h))


class VideoEncoder(nn.Module):
    """``forward(video (B, T, 3, H, W) in [0, 1]) -> EncoderOutput``.

    ``features`` are all tokens (B, N, hidden_size), N = t * h * w with t = ceil(T / tubelet_size),
    h = H / patch_size, w = W / patch_size, ordered time-major (token i is at time step
    ``i // (h * w)``); ``mask`` is None. ``extras``: ``frame_features`` (B, t, hidden_size), the
    per-time-step mean of the tokens; ``grid`` (t, h, w); with the temporal MoE ``router_probs``
    (num_layers, B, N, num_video_experts) and ``aux_loss`` (scalar, sum over layers; zero when
    ``aux_loss_coef`` is 0). Call :meth:`update_moe_bias` once per optimizer step.
    """

    def __init__(self, cfg: VideoEncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.hidden_size = cfg.hidden_size
        self.patch_embed = nn.Linear(3 * cfg.tubelet_size * cfg.patch_size**2, cfg.hidden_size)
        if cfg.use_video_3d_rope:
            self.rope_inv_freqs = axial_rope_freqs(cfg.hidden_size // cfg.num_heads, 3, cfg.rope_theta)
        else:
            self.pos_t = nn.Embedding(-(-cfg.max_frames // cfg.tubelet_size), cfg.hidden_size)
            self.pos_y = nn.Embedding(cfg.max_size // cfg.patch_size, cfg.hidden_size)
            self.pos_x = nn.Embedding(cfg.max_size // cfg.patch_size, cfg.hidden_size)
            for table in (self.pos_t, self.pos_y, self.pos_x):
                nn.init.normal_(table.weight, std=cfg.initializer_range)
        self.layers = nn.ModuleList(VideoBlock(cfg) for _ in range(cfg.num_video_encoder_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, impl=cfg.kernels)

    def tokenize(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Normalise to [-1, 1] and embed tubelets: (B, T, 3, H, W) -> tokens (B, t*h*w, hidden), grid."""
        cfg = self.config
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video encoder expects (B, T, 3, H, W), got shape {tuple(video.shape)}")
        batch, frames, _, height, width = video.shape
        p, tt = cfg.patch_size, cfg.tubelet_size
        if height % p or width % p:
            raise ValueError(f"video frames {height}x{width} are not multiples of patch_size {p}")
        if frames % tt:
            video = torch.cat((video, video[:, -1:].expand(-1, tt - frames % tt, -1, -1, -1)), dim=1)
        t, h, w = video.shape[1] // tt, height // p, width // p
        x = (video.to(self.patch_embed.weight.dtype) - 0.5) / 0.5
        x = x.reshape(batch, t, tt, 3, h, p, w, p).permute(0, 1, 4, 6, 2, 3, 5, 7)
        return self.patch_embed(x.reshape(batch, t * h * w, -1)), (t, h, w)

    def _positions(self, tokens: torch.Tensor, grid: tuple[int, int, int]):
        """(tokens with learned positions added, rope tuple or None)."""
        coords = grid_coords(*grid, device=tokens.device)
        if self.config.use_video_3d_rope:
            cos, sin = axial_rope_cos_sin(coords, self.rope_inv_freqs)
            return tokens, (cos, sin, self.rope_inv_freqs)
        limits = (self.pos_t.num_embeddings, self.pos_y.num_embeddings, self.pos_x.num_embeddings)
        if any(n > limit for n, limit in zip(grid, limits, strict=True)):
            raise ValueError(
                f"video grid (t, h, w) = {grid} exceeds the learned position tables {limits} "
                "(raise max_frames / max_size or set use_video_3d_rope)"
            )
        pos = self.pos_t(coords[:, 0]) + self.pos_y(coords[:, 1]) + self.pos_x(coords[:, 2])
        return tokens + pos.to(tokens.dtype), None

    def forward(self, video: torch.Tensor) -> EncoderOutput:
        tokens, grid = self.tokenize(video)
        x, rope = self._positions(tokens, grid)
        attn_mask = None
        if self.config.causal_time:
            step = torch.arange(grid[0], device=x.device).repeat_interleave(grid[1] * grid[2])
            attn_mask = step[None, :] <= step[:, None]  # True = may attend
        for layer in self.layers:
            x = layer(x, grid, rope, attn_mask)
        x = self.norm(x)
        extras = {"grid": grid, "frame_features": x.view(x.shape[0], grid[0], -1, x.shape[-1]).mean(dim=2)}
        moes = self.moe_layers()
        if moes:
            extras["router_probs"] = torch.stack([m.router_probs for m in moes])
            extras["aux_loss"] = torch.stack([m.aux_loss for m in moes]).sum()
        return EncoderOutput(features=x, mask=None, extras=extras)

    def moe_layers(self) -> list[TemporalMoE]:
        return [layer.moe for layer in self.layers if layer.moe is not None]

    def update_moe_bias(self) -> None:
        """Aux-loss-free balancing step of every temporal MoE (once per optimizer step, as the LLM's)."""
        for moe in self.moe_layers():
            moe.update_bias()


def build_video_encoder(cfg: VideoEncoderConfig | dict | None = None) -> VideoEncoder:
    """A freshly initialised :class:`VideoEncoder` for ``cfg`` (a config, a dict of knobs, or the preset)."""
    if not isinstance(cfg, VideoEncoderConfig):
        cfg = VideoEncoderConfig.model_validate(cfg or {})
    return VideoEncoder(cfg)
