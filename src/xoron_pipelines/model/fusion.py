"""Cross-attention fusion: Flamingo's gated cross-attention blocks between the LLM's decoder layers.

:class:`GatedCrossAttention` is Flamingo's GATED XATTN-DENSE block::

    y = x + tanh(alpha_attn) * attn(norm(x), media)          # text queries, media keys / values
    y = y + tanh(alpha_ff)   * ffn(norm(y))

with both gates initialised at 0, so at initialisation the block is exactly the identity and the
LLM computes what it computed before fusion was added. Which media a text token may attend to is
the ``visible`` mask (B, T, M): the multimodal model makes a token see every media item whose start
marker comes before it in its own sequence. A token that sees no media is left exactly unchanged
(attention and feed-forward both skipped for it), so a row without media is the plain LLM's.

:class:`FusionLayers` owns one block per fused decoder layer (after every ``every``-th layer:
layers ``every - 1, 2 * every - 1, ...``) and attaches them to an LLM with forward hooks on its
decoder layers, so the LLM's own modules and weight names stay as they are (its HF export, LoRA
and device maps are untouched). The hooks act only inside :meth:`FusionLayers.attend` (one
multimodal forward); a direct ``llm(...)`` call is the plain LLM. Under gradient checkpointing
transformers checkpoints a layer's ``forward``, not its hooks, so the fusion blocks are not
recomputed in backward and need no media then.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class GatedCrossAttention(nn.Module):
    """``forward(hidden (B, T, D), media (B, M, D), visible (B, T, M) bool) -> (B, T, D)``."""

    def __init__(self, dim: int, num_heads: int, ff_mult: int = 4, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"cross-attention fusion: d_model {dim} is not divisible by cross_attention_heads {num_heads}"
            )
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.media_norm = nn.LayerNorm(dim, eps=eps)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim, eps=eps),
            nn.Linear(dim, ff_mult * dim, bias=False),
            nn.GELU(),
            nn.Linear(ff_mult * dim, dim, bias=False),
        )
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, media: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        sees = visible.any(dim=-1, keepdim=True)  # (B, T, 1): the token sees some media
        # a row with no visible key would softmax to NaN: let it attend to all, then drop its output
        mask = (visible | ~sees)[:, None]
        media = media.to(hidden.dtype)
        k, v = self.kv_proj(self.media_norm(media)).chunk(2, dim=-1)
        q = self.q_proj(self.norm(hidden))
        attn = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=mask)
        attn = self.o_proj(attn.transpose(1, 2).reshape(hidden.shape))
        gate = sees.to(hidden.dtype)
        out = hidden + gate * torch.tanh(self.attn_gate).to(hidden.dtype) * attn
        return out + gate * torch.tanh(self.ff_gate).to(hidden.dtype) * self.ff(out)


def fused_layer_indices(num_layers: int, every: int) -> list[int]:
    """The decoder layers followed by a fusion block: every ``every``-th (none when ``every`` is 0)."""
    if every < 0:
        raise ValueError(f"cross_attention_every must be >= 0, got {every}")
    if every > num_layers:
        raise ValueError(
            f"cross_attention_every {every} exceeds the LLM's {num_layers} decoder layers (0 disables fusion)"
        )
    return [] if every == 0 else list(range(every - 1, num_layers, every))


class FusionLayers(nn.Module):
    """The gated cross-attention blocks of one LLM, keyed by decoder layer index (``blocks["3"]``)."""

    def __init__(self, layer_indices: list[int], dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({str(i): GatedCrossAttention(dim, num_heads, eps=eps) for i in layer_indices})
        self._media: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handles: list = []

    def attach(self, decoder_layers: nn.ModuleList) -> None:
        """Hook the blocks onto ``decoder_layers`` (the LLM's ``model.layers``); re-attaching replaces
        the previous hooks."""
        self.detach()
        for key, block in self.blocks.items():
            self._handles.append(decoder_layers[int(key)].register_forward_hook(functools.partial(self._fuse, block)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _fuse(self, block: GatedCrossAttention, _module, _args, output):
        """The forward hook of a fused decoder layer (a bound method in a ``partial``, not a closure,
        so ``copy.deepcopy`` of the model hooks the copy's layers to the copy's blocks)."""
        if self._media is None:
            return output
        media, visible = self._media
        if output.shape[:2] != visible.shape[:2]:
            raise ValueError(
                f"cross-attention fusion: the decoder layer returned {tuple(output.shape[:2])} (batch, tokens) "
                f"but the media were placed for {tuple(visible.shape[:2])}"
            )
        return block(output, media, visible)

    @contextlib.contextmanager
    def attend(self, media: torch.Tensor | None, visible: torch.Tensor | None) -> Iterator[None]:
        """Within the block, the hooks fuse ``media`` (B, M, D) for tokens per ``visible`` (B, T, M);
        ``media=None`` (no media this forward) leaves every layer untouched."""
        self._media = None if media is None else (media, visible)
        try:
            yield
        finally:
            self._media = None


__all__ = ["FusionLayers", "GatedCrossAttention", "fused_layer_indices"]
