"""Projectors: encoder features (B, N, d_enc) -> a fixed number of LLM tokens (B, num_tokens, d_model).

Seed 000's ``projector_type``:

* ``perceiver`` (default): a Perceiver resampler as in Flamingo / IDEFICS. ``num_tokens`` learned
  latent queries; each layer lets the latents attend to the concatenation ``[features; latents]``
  (cross-attention to the media and self-attention among the latents in one softmax, Flamingo's
  formulation), then a GELU feed-forward, both pre-LayerNorm and residual. The features are first
  projected to ``d_model`` by a linear layer; a final LayerNorm closes the stack. Any N works.
* ``mlp``: LLaVA's 2-layer MLP (Linear, GELU, Linear) per feature, then adaptive average pooling
  over the token axis to ``num_tokens`` (the bins of ``torch.nn.functional.adaptive_avg_pool1d``).

Both take the encoder's ``mask`` (B, N) bool (True = valid; None = all valid, e.g. audio padding
frames are False): masked features are never read, so what padding holds cannot change the output,
and a padded item gives the same tokens as the item alone (up to float rounding).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ProjectorType = Literal["perceiver", "mlp"]


def _check(features: torch.Tensor, mask: torch.Tensor | None, in_dim: int) -> None:
    if features.dim() != 3 or features.shape[-1] != in_dim:
        raise ValueError(f"projector expects features (B, N, {in_dim}), got shape {tuple(features.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(features.shape[:2]):
        raise ValueError(
            f"projector mask shape {tuple(mask.shape)} does not match features {tuple(features.shape[:2])}"
        )


class PerceiverLayer(nn.Module):
    """Latents attend to ``[media; latents]`` (masked media keys ignored), then a feed-forward."""

    def __init__(self, dim: int, num_heads: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, ff_mult * dim, bias=False),
            nn.GELU(),
            nn.Linear(ff_mult * dim, dim, bias=False),
        )

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, media: torch.Tensor, latents: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """``media`` (B, N, D), ``latents`` (B, L, D), ``key_valid`` (B, N + L) bool -> latents (B, L, D)."""
        lat = self.norm_latents(latents)
        keys = torch.cat((self.norm_media(media), lat), dim=1)
        k, v = self.kv_proj(keys).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(lat)), self._heads(k), self._heads(v), attn_mask=key_valid[:, None, None, :]
        )
        latents = latents + self.o_proj(out.transpose(1, 2).reshape(latents.shape))
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """``forward(features (B, N, in_dim), mask (B, N) | None) -> (B, num_tokens, out_dim)``."""

    def __init__(
        self, in_dim: int, out_dim: int, num_tokens: int, num_layers: int = 2, num_heads: int = 4, ff_mult: int = 4
    ) -> None:
        super().__init__()
        if out_dim % num_heads:
            raise ValueError(f"perceiver projector: d_model {out_dim} is not divisible by projector_heads {num_heads}")
        self.in_dim, self.num_tokens = in_dim, num_tokens
        self.input_proj = nn.Linear(in_dim, out_dim)
        self.latents = nn.Parameter(torch.randn(num_tokens, out_dim) * out_dim**-0.5)
        self.layers = nn.ModuleList(PerceiverLayer(out_dim, num_heads, ff_mult) for _ in range(num_layers))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(features, mask, self.in_dim)
        batch, n = features.shape[:2]
        media = self.input_proj(features)
        media_valid = torch.ones(batch, n, dtype=torch.bool, device=media.device) if mask is None else mask.bool()
        # masked features are zeroed too, so NaN / inf in padding cannot leak through 0 * x
        media = media.masked_fill(~media_valid[..., None], 0.0)
        key_valid = torch.cat((media_valid, media_valid.new_ones(batch, self.num_tokens)), dim=1)
        latents = self.latents.to(media.dtype).expand(batch, -1, -1)
        for layer in self.layers:
            latents = layer(media, latents, key_valid)
        return self.norm(latents)


def masked_adaptive_avg_pool(x: torch.Tensor, num_tokens: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Adaptive average pooling over axis 1 of ``x`` (B, N, D) to ``num_tokens`` bins, over the valid
    tokens only (``mask`` True = valid; their order kept). Bin i of an item with n valid tokens
    averages valid tokens ``floor(i n / T) .. ceil((i + 1) n / T) - 1`` (T = ``num_tokens``): the bins of
    ``adaptive_avg_pool1d`` over the valid tokens alone. An item without valid tokens pools to zeros."""
    batch, n, _ = x.shape
    valid = torch.ones(batch, n, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    count = valid.sum(dim=1, keepdim=True)  # (B, 1)
    rank = valid.long().cumsum(dim=1) - 1  # rank of each valid token among the valid ones
    bins = torch.arange(num_tokens, device=x.device)[None, :]  # (1, T)
    start = torch.div(bins * count, num_tokens, rounding_mode="floor")  # (B, T)
    end = -torch.div(-(bins + 1) * count, num_tokens, rounding_mode="floor")  # ceil
    member = valid[:, None, :] & (rank[:, None, :] >= start[..., None]) & (rank[:, None, :] < end[..., None])
    weights = member.to(x.dtype) / member.sum(dim=-1, keepdim=True).clamp(min=1).to(x.dtype)
    return weights @ x.masked_fill(~valid[..., None], 0.0)


class MLPProjector(nn.Module):
    """``forward(features (B, N, in_dim), mask) -> (B, num_tokens, out_dim)``: MLP, then pooling."""

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.in_dim, self.num_tokens = in_dim, num_tokens
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(features, mask, self.in_dim)
        return masked_adaptive_avg_pool(self.mlp(features), self.num_tokens, mask)


def build_projector(
    kind: ProjectorType, in_dim: int, out_dim: int, num_tokens: int, num_layers: int = 2, num_heads: int = 4
) -> nn.Module:
    """The projector of ``projector_type`` ``kind`` from ``in_dim`` encoder features to ``num_tokens``
    tokens of width ``out_dim`` (``num_layers`` / ``num_heads`` are the perceiver's)."""
    if kind == "perceiver":
        return PerceiverResampler(in_dim, out_dim, num_tokens, num_layers, num_heads)
    if kind == "mlp":
        return MLPProjector(in_dim, out_dim, num_tokens)
    raise ValueError(f"projector_type {kind!r}: expected perceiver or mlp")


__all__ = ["MLPProjector", "PerceiverResampler", "ProjectorType", "build_projector", "masked_adaptive_avg_pool"]
