"""MoE-DiT: the diffusion transformer of image and video generation (seeds 000 / 003).

One class, :class:`MoEDiT`, for both: an image is a video of one frame.

* **Patchified input**: (B, C, H, W) images or (B, T, C, H, W) videos (pixels or autoencoder
  latents) -> non-overlapping ``patch_size`` patches per frame -> (B, T*h*w, hidden) tokens.
  Any H, W divisible by ``patch_size`` works (multi-scale): positions are rotary, not a table.
* **adaLN-Zero** (DiT, Peebles & Xie 2023): the timestep embedding (diffusers' sinusoidal
  ``Timesteps`` + ``TimestepEmbedding``) plus the masked mean of the projected text gives the
  conditioning vector ``c``; every block regresses shift / scale / gate from ``c`` through a
  zero-initialised linear layer, so each block starts as the identity.
* **Text conditioning**: the frozen LLM's last hidden states of the prompt (B, L, text_dim) with
  a mask (True = token). ``use_dual_stream=True``: MMDiT (SD3 / Flux) blocks, text and image
  tokens each with their own weights and modulation, one joint attention over [text; image];
  ``False``: image self-attention then cross-attention to the text.
  Classifier-free guidance: :attr:`null_context` is a learned one-token "empty prompt"
  (:meth:`MoEDiT.drop_context` swaps it in for dropped rows while training).
* **Axial RoPE** (:mod:`.rope`): 2D (row, col) on image tokens; for video 3D (frame, row, col)
  with ``use_3d_rope``, else 2D plus a learned frame embedding. Text tokens are not rotated.
* **Causal video attention**: with ``causal`` an image token of frame t attends to the text and
  to frames <= t (block-causal in time), so a clip can be extended frame block by frame block.
  The timestep may be one per clip (B,) or one per frame (B, T): each frame's tokens are then
  modulated by their own frame's noise level (diffusion forcing: clean earlier frames beside a
  noisy current one, what frame-by-frame sampling needs).
* **MoE MLPs**: the image stream's MLP is :class:`xoron_pipelines.model.moe.MoE` (top-k routed
  SwiGLU experts, aux-loss-free balancing bias; :meth:`MoEDiT.update_moe_bias` once per step).
  ``temporal_moe`` (video): the router scores each *frame* (its tokens' mean), so all tokens of
  a frame go to the same experts and experts can specialise along time.
* **Prediction** (flow matching): ``velocity`` regresses ``noise - x0`` directly; ``sample``
  (JiT, Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise") regresses the
  clean ``x0`` and returns it as the velocity ``(x_s - x0_hat) / max(s, min_sigma)`` with
  ``s = timestep / 1000``, so training (loss on the velocity) and sampling are unchanged. Clean
  data lie near a low-dimensional manifold while noise fills every patch dimension, so a narrow
  model (here 48-value pixel patches on a 64-wide stream) can predict the first but not the
  second: velocity prediction leaves speckle at the last steps, x-prediction solid colours.

A ``diffusers`` ``ModelMixin`` / ``ConfigMixin``: ``save_pretrained`` writes config.json +
safetensors, ``MoEDiT.from_pretrained`` reads them, and a diffusers pipeline can hold it.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from xoron_pipelines.model.moe import MoE
from xoron_pipelines.model.rope import apply_axial_rope, axial_rope_cos_sin, axial_rope_freqs, grid_coords


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``shift`` / ``scale`` per row (B, d) or already per token (B, N, d)."""
    if shift.dim() == 2:
        shift, scale = shift[:, None], scale[:, None]
    return x * (1 + scale) + shift


def _per_token(mod: torch.Tensor, tokens: int) -> torch.Tensor:
    """A modulation (B, k) -> (B, 1, k) for every token, or per frame (B, T, k) -> (B, tokens, k)
    (each frame's value repeated over its tokens)."""
    return mod[:, None] if mod.dim() == 2 else mod.repeat_interleave(tokens // mod.shape[1], dim=1)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class RoutedMlp(nn.Module):
    """The image stream's MoE feed-forward. ``temporal``: route once per frame (the mean of the
    frame's tokens picks the experts every token of that frame uses)."""

    def __init__(self, dim: int, num_experts: int, top_k: int, expert_hidden: int, temporal: bool) -> None:
        super().__init__()
        cfg = SimpleNamespace(
            hidden_size=dim,
            num_experts=num_experts,
            num_experts_per_tok=min(top_k, num_experts),
            router_scoring="softmax",
            norm_topk_prob=True,
            routed_scaling_factor=1.0,
            kernels="torch",
            initializer_range=0.02,
            expert_intermediate_size=expert_hidden,
            intermediate_size=expert_hidden,
            num_shared_experts=0,
            bias_update_rate=1e-3,
            aux_loss_coef=0.0,
        )
        self.moe = MoE(cfg)
        self.temporal = temporal

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        if not self.temporal:  # a one-frame clip routes its frame too (frame-by-frame sampling)
            return self.moe(x)
        b, n, d = x.shape
        per_frame = x.view(b, frames, n // frames, d)
        _, weights, indices = self.moe.gate(per_frame.mean(dim=2).reshape(-1, d))  # (B*T, k)
        rep = n // frames
        indices, weights = indices.repeat_interleave(rep, 0), weights.repeat_interleave(rep, 0)
        out = self.moe.experts(x.reshape(-1, d), indices, weights)
        if self.training:
            self.moe._count_tokens(indices)
        return out.view(b, n, d)


class _Attention(nn.Module):
    """qkv projections + per-head RMS q/k norm (as SD3 / Flux) of one stream."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.out = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v


def _attend(q, k, v, mask) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, h, n, dh = out.shape
    return out.transpose(1, 2).reshape(b, n, h * dh)


class Block(nn.Module):
    """One DiT block. Dual stream: text and image each keep weights and adaLN modulation and
    meet in one joint attention. Single stream: image self-attention + cross-attention to the
    text (text passes through unchanged)."""

    def __init__(self, dim, heads, mlp_ratio, dual, experts, top_k, temporal) -> None:
        super().__init__()
        self.dual = dual
        hidden = int(dim * mlp_ratio)
        self.x_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.x_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.x_attn = _Attention(dim, heads)
        self.x_mlp = RoutedMlp(dim, experts, top_k, hidden, temporal)
        n_mod = 6
        if dual:
            self.c_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.c_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.c_attn = _Attention(dim, heads)
            self.c_mlp = _Mlp(dim, hidden)
            self.c_mod = nn.Linear(dim, 6 * dim)
        else:
            self.x_norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.cross_q = nn.Linear(dim, dim)
            self.cross_kv = nn.Linear(dim, 2 * dim)
            self.cross_out = nn.Linear(dim, dim)
            n_mod = 9
        self.x_mod = nn.Linear(dim, n_mod * dim)
        self.heads = heads

    def forward(self, x, ctx, c, rope, x_mask, ctx_mask, frames):
        # c: (B, d), or (B, T, d) with a timestep per frame; the text stream then takes the first
        # frame's, which every frame's prefix holds (a later frame's level must not reach earlier
        # frames through the text tokens they attend to)
        mod = _per_token(self.x_mod(F.silu(c)), x.shape[1]).chunk(self.x_mod.out_features // x.shape[-1], dim=-1)
        cos, sin, freqs = rope
        q, k, v = self.x_attn.qkv_heads(modulate(self.x_norm1(x), mod[0], mod[1]))
        q, k = apply_axial_rope(q, cos, sin, freqs), apply_axial_rope(k, cos, sin, freqs)
        if self.dual:
            cm = self.c_mod(F.silu(c if c.dim() == 2 else c[:, 0])).chunk(6, dim=-1)
            cq, ck, cv = self.c_attn.qkv_heads(modulate(self.c_norm1(ctx), cm[0], cm[1]))
            n_ctx = ctx.shape[1]
            out = _attend(torch.cat([cq, q], 2), torch.cat([ck, k], 2), torch.cat([cv, v], 2), x_mask)
            ctx = ctx + cm[2][:, None] * self.c_attn.out(out[:, :n_ctx])
            ctx = ctx + cm[5][:, None] * self.c_mlp(modulate(self.c_norm2(ctx), cm[3], cm[4]))
            x = x + mod[2] * self.x_attn.out(out[:, n_ctx:])
        else:
            x = x + mod[2] * self.x_attn.out(_attend(q, k, v, x_mask))
            b, n, d = x.shape
            h = modulate(self.x_norm3(x), mod[6], mod[7])
            cq = self.cross_q(h).view(b, n, self.heads, -1).transpose(1, 2)
            ck, cv = self.cross_kv(ctx).view(b, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
            x = x + mod[8] * self.cross_out(_attend(cq, ck, cv, ctx_mask[:, None, None, :]))
        x = x + mod[5] * self.x_mlp(modulate(self.x_norm2(x), mod[3], mod[4]), frames)
        return x, ctx


class MoEDiT(ModelMixin, ConfigMixin):
    """The generator's denoiser; see the module docstring. ``forward(sample, timestep, context,
    context_mask)`` -> the prediction (velocity or noise), shaped like ``sample``."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 4,
        hidden_size: int = 96,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        text_dim: int = 128,
        num_experts: int = 4,
        num_experts_per_tok: int = 2,
        use_dual_stream: bool = True,
        video: bool = False,
        max_frames: int = 32,
        use_3d_rope: bool = True,
        temporal_moe: bool = True,
        causal: bool = True,
        rope_theta: float = 100.0,
        prediction: str = "velocity",
        min_sigma: float = 0.05,
    ) -> None:
        super().__init__()
        if prediction not in ("velocity", "sample"):
            raise ValueError(f"prediction must be 'velocity' or 'sample', got {prediction!r}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        d, p = hidden_size, patch_size
        self.patch = nn.Conv2d(in_channels, d, p, stride=p)
        self.text_norm = nn.LayerNorm(text_dim)
        self.text_proj = nn.Linear(text_dim, d)
        self.null_context = nn.Parameter(torch.randn(1, 1, text_dim) * 0.02)
        self.time_proj = Timesteps(d, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(d, d)
        self.pool_embed = nn.Linear(d, d)
        self.frame_embed = nn.Embedding(max_frames, d) if video and not use_3d_rope else None
        self.rope_freqs = axial_rope_freqs(d // num_heads, 3 if video and use_3d_rope else 2, rope_theta)
        self.blocks = nn.ModuleList(
            Block(d, num_heads, mlp_ratio, use_dual_stream, num_experts, num_experts_per_tok, video and temporal_moe)
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.Linear(d, 2 * d)
        self.final = nn.Linear(d, p * p * in_channels)
        self._zero_init()

    def _zero_init(self) -> None:
        """adaLN-Zero: modulation and output layers start at zero (every block = identity)."""
        for block in self.blocks:
            for lin in (block.x_mod, getattr(block, "c_mod", None)):
                if lin is not None:
                    nn.init.zeros_(lin.weight)
                    nn.init.zeros_(lin.bias)
        for lin in (self.final_mod, self.final):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def drop_context(self, context: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor):
        """Rows where ``drop`` (B,) is True get the learned empty prompt: :attr:`null_context`
        in the first position, the rest masked out. Returns (context, mask)."""
        if context.shape[1] == 0:
            context, mask = context.new_zeros(context.shape[0], 1, context.shape[2]), mask.new_zeros(mask.shape[0], 1)
        null = self.null_context.to(context.dtype).expand(context.shape[0], context.shape[1], -1)
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = True
        d = drop[:, None]
        return torch.where(d[..., None], null, context), torch.where(d, null_mask, mask)

    def unconditional(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty prompt for ``batch`` rows: (context (B, 1, text_dim), mask (B, 1))."""
        return self.null_context.expand(batch, 1, -1).to(device), torch.ones(batch, 1, dtype=torch.bool, device=device)

    def moe_layers(self) -> list[MoE]:
        return [b.x_mlp.moe for b in self.blocks]

    @torch.no_grad()
    def update_moe_bias(self) -> None:
        """Aux-loss-free balancing: once per optimizer step."""
        for moe in self.moe_layers():
            moe.update_bias()

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        video = sample.dim() == 5
        if video != self.config.video:
            kind = "video (B, T, C, H, W)" if self.config.video else "image (B, C, H, W)"
            raise ValueError(f"this generator takes {kind} samples, got shape {tuple(sample.shape)}")
        x5 = sample if video else sample[:, None]
        b, t, ch, hh, ww = x5.shape
        p = self.config.patch_size
        if hh % p or ww % p:
            raise ValueError(f"sample size {hh}x{ww} is not divisible by patch_size {p}")
        if t > self.config.max_frames:
            raise ValueError(f"{t} frames exceed max_frames {self.config.max_frames}")
        h, w = hh // p, ww // p
        x = self.patch(x5.reshape(b * t, ch, hh, ww)).flatten(2).transpose(1, 2).reshape(b, t * h * w, -1)
        if self.frame_embed is not None:
            x = x + self.frame_embed(torch.arange(t, device=x.device)).repeat_interleave(h * w, 0)
        ctx = self.text_proj(self.text_norm(context))
        m = context_mask.to(ctx.dtype)[..., None]
        pooled = (ctx * m).sum(1) / m.sum(1).clamp(min=1)
        ts = timestep.to(x.device).float()
        if ts.dim() == 2:  # a timestep per frame (video): (B, T)
            if not video or tuple(ts.shape) != (b, t):
                raise ValueError(f"per-frame timesteps must be (batch, frames) = {(b, t)}, got {tuple(ts.shape)}")
            temb = self.time_embed(self.time_proj(ts.reshape(-1)).to(x.dtype)).view(b, t, -1)
            c = temb + self.pool_embed(pooled)[:, None]
        else:
            c = self.time_embed(self.time_proj(ts.expand(b)).to(x.dtype)) + self.pool_embed(pooled)
        coords = (
            grid_coords(t, h, w, device=x.device)
            if (video and self.config.use_3d_rope)
            else grid_coords(h, w, device=x.device).repeat(t, 1)
        )
        cos, sin = axial_rope_cos_sin(coords, self.rope_freqs)
        x_mask, ctx_mask = self._masks(context_mask, t, h * w)
        for block in self.blocks:
            x, ctx = block(x, ctx, c, (cos, sin, self.rope_freqs), x_mask, ctx_mask, t)
        shift, scale = _per_token(self.final_mod(F.silu(c)), x.shape[1]).chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(x), shift, scale))  # (B, N, p*p*C)
        out = out.view(b, t, h, w, p, p, ch).permute(0, 1, 6, 2, 4, 3, 5).reshape(b, t, ch, hh, ww)
        if self.config.prediction == "sample":  # x-prediction, returned as the velocity (x_s - x0) / s
            sigma = (ts / 1000).clamp(min=self.config.min_sigma)
            sigma = sigma.view(b, -1, 1, 1, 1) if sigma.dim() == 2 else sigma.expand(b).view(b, 1, 1, 1, 1)
            out = (x5 - out) / sigma
        return out if video else out[:, 0]

    def _masks(self, context_mask: torch.Tensor, frames: int, per_frame: int):
        """Boolean attention masks (True = attend), broadcast over heads: the joint one (dual
        stream: [text; image] queries over [text; image] keys) or the image self-attention one
        (single stream), and the text-key mask of cross-attention."""
        b, n_ctx = context_mask.shape
        n = frames * per_frame
        dev = context_mask.device
        frame = torch.arange(n, device=dev) // per_frame
        img_img = (
            frame[:, None] >= frame[None, :]
            if self.config.video and self.config.causal
            else torch.ones(n, n, dtype=torch.bool, device=dev)
        )
        if not self.config.use_dual_stream:
            return img_img[None, None], context_mask
        full = torch.zeros(b, n_ctx + n, n_ctx + n, dtype=torch.bool, device=dev)
        full[:, :, :n_ctx] = context_mask[:, None, :]  # everyone sees the valid text tokens
        full[:, n_ctx:, n_ctx:] = img_img
        # text queries see every image token, or none in causal video (no path from a later
        # frame back to an earlier one through the text stream)
        full[:, :n_ctx, n_ctx:] = not (self.config.video and self.config.causal)
        return full[:, None], context_mask
