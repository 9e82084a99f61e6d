"""Vision encoder (seed 000's "Vision Configuration"): images (B, 3, H, W) in [0, 1] -> features.

Two backbones, chosen by ``vision_model_name``:

* empty / None: a SigLIP-style ViT trained from scratch (:class:`VisionEncoder`): a patch
  convolution, pre-LayerNorm blocks (SDPA attention with biases, GELU-tanh MLP like transformers'
  ``SiglipMLP``) and a final LayerNorm (SigLIP's ``post_layernorm``). Instead of SigLIP's learned
  position table it rotates queries and keys by 2D-RoPE over the (row, col) patch coordinates
  (``model/rope.py``): attention sees only relative offsets, so any resolution or aspect ratio
  works without interpolating a table. A batch has one image size (multi-scale training samples
  one size per batch).
* a local directory of a Hugging Face vision model (SigLIP, or any ``AutoModel`` vision tower;
  the vision half of a dual encoder such as ``SiglipModel`` is taken): :class:`PretrainedVisionEncoder`
  loads it offline (``local_files_only=True``, no remote code) and returns its
  ``last_hidden_state``. A hub id is refused: download it to a folder first.

On top of either backbone, two optional parts of Xoron-Dev's encoder:

* dual stream (``use_vision_dual_stream``, ``num_vision_dual_stream_layers`` = N): the last N
  blocks run two streams over the same tokens, each with its own weights (LayerNorms, q/k/v and
  output projections, MLP) - stream A meant for local detail, stream B for global semantics.
  They exchange information by joint attention as in MMDiT (SD3): each stream projects its own
  queries, keys and values, attention runs once over the concatenation of both streams' tokens
  (each query sees every key of both streams), and each stream takes its own outputs back
  through its own output projection and MLP. After the last dual block a linear layer on the
  concatenated streams merges them into one (initialised to their mean).
* TiTok (``use_vision_titok``): ``num_vision_titok_tokens`` learned latent tokens (TiTok's 1D
  tokenizer) are appended to the patch sequence for the last ``num_vision_titok_layers`` blocks;
  they attend jointly with the patches (and join both streams in dual blocks) and the output is
  the latent tokens only: a fixed number of features whatever the resolution. Latents carry no
  position (they are rotated by coordinate (0, 0), i.e. not at all).

With a pretrained backbone, the dual-stream and TiTok blocks are new blocks appended after it
(``max(N, titok layers)`` of them, sized like the backbone); ``freeze_vision`` freezes the
backbone (all of the from-scratch encoder; only the pretrained tower otherwise, so the new
blocks train) and keeps it in eval mode.

Every encoder returns :class:`EncoderOutput` (the contract shared with the video and audio
encoders) and has ``hidden_size``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from xoron_pipelines.model.rope import apply_axial_rope, axial_rope_cos_sin, axial_rope_freqs, grid_coords
from xoron_pipelines.validation import StrictModel


@dataclass
class EncoderOutput:
    """What every media encoder returns.

    ``features``: (B, N, hidden_size); ``mask``: (B, N) bool, True = valid, or None when every
    position is valid; ``extras``: encoder-specific outputs (the vision encoder puts the patch
    ``grid`` (rows, cols) there; others e.g. ``ctc_logits``, ``router_probs``).
    """

    features: torch.Tensor
    mask: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


class VisionEncoderConfig(StrictModel):
    """Seed 000's vision knobs plus the from-scratch preset (CPU-sized defaults; SigLIP-so400m is
    hidden 1152, 27 layers, 16 heads, intermediate 4304, patch 14)."""

    # None or "" = the from-scratch ViT below; else a local directory of a HF vision model
    vision_model_name: str | None = None
    freeze_vision: bool = False
    use_vision_titok: bool = True
    num_vision_titok_tokens: int = Field(16, ge=1)
    num_vision_titok_layers: int = Field(1, ge=1)  # last blocks the latents join (TiTok proper: all)
    use_vision_dual_stream: bool = True
    num_vision_dual_stream_layers: int = Field(1, ge=1)
    # from-scratch preset (ignored with vision_model_name, except by the appended blocks' eps)
    hidden_size: int = Field(96, ge=1)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=1)
    patch_size: int = Field(8, ge=1)
    use_2d_rope: bool = True  # False: no position information at all (an ablation)
    rope_theta: float = Field(100.0, gt=1.0)  # patch grids are short: a small base resolves them
    layer_norm_eps: float = Field(1e-6, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> VisionEncoderConfig:
        if self.vision_model_name:
            path = Path(self.vision_model_name).expanduser()
            if not path.is_dir():
                raise ValueError(
                    f"vision_model_name {self.vision_model_name!r} is not a local directory: models load "
                    "offline only (local_files_only=True); download it first (e.g. `hf download "
                    f"{self.vision_model_name} --local-dir models/vision`) and set vision_model_name to "
                    "that folder, or leave it empty to train the encoder from scratch"
                )
            return self
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        if self.use_2d_rope and (head_dim % 2 or head_dim < 4):
            raise ValueError(f"use_2d_rope needs an even head dim >= 4 (hidden_size / num_heads = {head_dim})")
        if self.use_vision_dual_stream and self.num_vision_dual_stream_layers > self.num_layers:
            raise ValueError(
                f"num_vision_dual_stream_layers {self.num_vision_dual_stream_layers} exceeds num_layers {self.num_layers}"
            )
        if self.use_vision_titok and self.num_vision_titok_layers > self.num_layers:
            raise ValueError(
                f"num_vision_titok_layers {self.num_vision_titok_layers} exceeds num_layers {self.num_layers}"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Blocks


class _Rope:
    """2D-RoPE (cos, sin) for a token sequence, or no rotation when ``inv_freqs`` is None."""

    def __init__(self, coords: torch.Tensor | None, inv_freqs: list[torch.Tensor] | None) -> None:
        self.inv_freqs = inv_freqs
        self.cos = self.sin = None
        if inv_freqs is not None and coords is not None:
            self.cos, self.sin = axial_rope_cos_sin(coords, inv_freqs)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.cos is None:
            return x
        return apply_axial_rope(x, self.cos, self.sin, self.inv_freqs)


class _Stream(nn.Module):
    """The weights of one stream of a pre-LN block: LayerNorm -> q/k/v (one fused projection,
    with biases) ... output projection; LayerNorm -> GELU-tanh MLP. Attention itself is run by
    the block, so a dual block can attend over both streams at once."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)

    def qkv_heads(self, x: torch.Tensor, rope: _Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v), each (B, heads, N, head_dim); q and k rotated by ``rope``."""
        b, n, h = x.shape
        q, k, v = (
            self.qkv(self.layer_norm1(x)).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        )
        return rope(q), rope(k), v

    def update(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual updates of ``x`` (B, N, hidden) from the attention output (B, heads, N, head_dim)."""
        b, _, n, _ = attn.shape
        x = x + self.out_proj(attn.transpose(1, 2).reshape(b, n, -1))
        return x + self.fc2(F.gelu(self.fc1(self.layer_norm2(x)), approximate="tanh"))


class VisionBlock(nn.Module):
    """One single-stream pre-LN transformer block (SigLIP's encoder layer with 2D-RoPE)."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.stream = _Stream(hidden, heads, intermediate, eps)

    def forward(self, x: torch.Tensor, rope: _Rope, keep_from: int = 0) -> torch.Tensor:
        """``keep_from``: only tokens ``keep_from:`` are updated and returned (the last TiTok
        block keeps just the latents; all tokens still serve as keys and values)."""
        q, k, v = self.stream.qkv_heads(x, rope)
        attn = F.scaled_dot_product_attention(q[:, :, keep_from:], k, v)
        return self.stream.update(x[:, keep_from:], attn)


class DualStreamBlock(nn.Module):
    """Two streams with separate weights joined by one attention over both (MMDiT-style)."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.stream_a = _Stream(hidden, heads, intermediate, eps)
        self.stream_b = _Stream(hidden, heads, intermediate, eps)

    def forward(
        self, xa: torch.Tensor, xb: torch.Tensor, rope: _Rope, keep_from: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qa, ka, va = self.stream_a.qkv_heads(xa, rope)
        qb, kb, vb = self.stream_b.qkv_heads(xb, rope)
        n = xa.shape[1]
        q = torch.cat((qa[:, :, keep_from:], qb[:, :, keep_from:]), dim=2)
        attn = F.scaled_dot_product_attention(q, torch.cat((ka, kb), dim=2), torch.cat((va, vb), dim=2))
        kept = n - keep_from
        return (
            self.stream_a.update(xa[:, keep_from:], attn[:, :, :kept]),
            self.stream_b.update(xb[:, keep_from:], attn[:, :, kept:]),
        )


class BlockStack(nn.Module):
    """``num_single`` single-stream blocks, then ``num_dual`` dual-stream blocks (merged after the
    last), with ``num_titok_tokens`` latents joining the last ``titok_layers`` blocks (0 = no
    TiTok). ``forward(x, coords)`` maps tokens (B, N, hidden) at integer coordinates (N, 2) to
    (B, N, hidden), or to the latents (B, num_titok_tokens, hidden) with TiTok."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        intermediate: int,
        eps: float,
        num_single: int,
        num_dual: int = 0,
        num_titok_tokens: int = 0,
        titok_layers: int = 0,
        rope_theta: float | None = 100.0,
    ) -> None:
        super().__init__()
        dims = (hidden, heads, intermediate, eps)
        self.blocks = nn.ModuleList(
            [VisionBlock(*dims) for _ in range(num_single)] + [DualStreamBlock(*dims) for _ in range(num_dual)]
        )
        self.num_single = num_single
        self.titok_start = len(self.blocks) - titok_layers if num_titok_tokens else None
        self.latents = nn.Parameter(torch.randn(num_titok_tokens, hidden) * 0.02) if num_titok_tokens else None
        self.merge = None
        if num_dual:
            self.merge = nn.Linear(2 * hidden, hidden)
            with torch.no_grad():  # starts as the mean of the two streams
                self.merge.weight.copy_(torch.cat((torch.eye(hidden), torch.eye(hidden)), dim=1) / 2)
                self.merge.bias.zero_()
        self.inv_freqs = axial_rope_freqs(hidden // heads, 2, rope_theta) if rope_theta is not None else None

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        n_patches, b = x.shape[1], x.shape[0]
        rope_patches = _Rope(coords, self.inv_freqs)
        rope = rope_patches
        xb = None  # stream B once the dual blocks start; x is then stream A
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if i == self.titok_start:
                lat = self.latents.to(x.dtype).expand(b, -1, -1)
                x = torch.cat((x, lat), dim=1)
                if xb is not None:
                    xb = torch.cat((xb, lat), dim=1)
                rope = _Rope(torch.cat((coords, coords.new_zeros(lat.shape[1], 2))), self.inv_freqs)
            keep = n_patches if (i == last and self.titok_start is not None) else 0
            if i < self.num_single:
                x = block(x, rope, keep)
            else:
                if xb is None:
                    xb = x
                x, xb = block(x, xb, rope, keep)
        if xb is not None:
            x = self.merge(torch.cat((x, xb), dim=-1))
        return x


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def _check_images(images: torch.Tensor, patch: int | None) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"vision encoder expects images (B, 3, H, W), got shape {tuple(images.shape)}")
    if patch and (images.shape[2] % patch or images.shape[3] % patch):
        raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of patch_size {patch}")


class VisionEncoder(nn.Module):
    """The from-scratch SigLIP-style ViT with 2D-RoPE (see the module docstring)."""

    def __init__(self, cfg: VisionEncoderConfig) -> None:
        super().__init__()
        self.hidden_size = cfg.hidden_size
        self.patch_size = cfg.patch_size
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        dual = cfg.num_vision_dual_stream_layers if cfg.use_vision_dual_stream else 0
        self.encoder = BlockStack(
            cfg.hidden_size,
            cfg.num_heads,
            cfg.intermediate_size,
            cfg.layer_norm_eps,
            num_single=cfg.num_layers - dual,
            num_dual=dual,
            num_titok_tokens=cfg.num_vision_titok_tokens if cfg.use_vision_titok else 0,
            titok_layers=cfg.num_vision_titok_layers if cfg.use_vision_titok else 0,
            rope_theta=cfg.rope_theta if cfg.use_2d_rope else None,
        )
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.frozen = cfg.freeze_vision
        if self.frozen:
            _freeze(self)

    def train(self, mode: bool = True) -> VisionEncoder:
        return super().train(mode and not self.frozen)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        """``images`` (B, 3, H, W) in [0, 1], H and W multiples of ``patch_size``."""
        _check_images(images, self.patch_size)
        x = self.patch_embedding((images - 0.5) / 0.5)  # SigLIP's normalisation (mean = std = 0.5)
        rows, cols = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2)
        x = self.encoder(x, grid_coords(rows, cols, device=x.device))
        return EncoderOutput(self.post_layernorm(x), None, {"grid": (rows, cols)})


class PretrainedVisionEncoder(nn.Module):
    """A local Hugging Face vision tower (see :func:`build_vision_encoder`), optionally followed
    by new dual-stream / TiTok blocks. Pixels are normalised with the folder's
    ``preprocessor_config.json`` mean / std (SigLIP's 0.5 / 0.5 when absent); images are not
    resized (position tables are interpolated when the tower supports it)."""

    def __init__(self, tower: nn.Module, cfg: VisionEncoderConfig, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.tower = tower
        tcfg = tower.config
        self.hidden_size = int(tcfg.hidden_size)
        self.patch_size = getattr(tcfg, "patch_size", None)
        self.image_size = getattr(tcfg, "image_size", None)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(tower.forward).parameters
        dual = cfg.num_vision_dual_stream_layers if cfg.use_vision_dual_stream else 0
        titok = cfg.num_vision_titok_layers if cfg.use_vision_titok else 0
        self.encoder = self.post_layernorm = None
        if dual or titok:
            heads = int(tcfg.num_attention_heads)
            self.encoder = BlockStack(
                self.hidden_size,
                heads,
                int(getattr(tcfg, "intermediate_size", 4 * self.hidden_size)),
                cfg.layer_norm_eps,
                num_single=max(0, titok - dual),
                num_dual=dual,
                num_titok_tokens=cfg.num_vision_titok_tokens if titok else 0,
                titok_layers=titok,
                rope_theta=cfg.rope_theta if cfg.use_2d_rope else None,
            )
            self.post_layernorm = nn.LayerNorm(self.hidden_size, eps=cfg.layer_norm_eps)
        self.frozen = cfg.freeze_vision
        if self.frozen:
            _freeze(self.tower)

    def train(self, mode: bool = True) -> PretrainedVisionEncoder:
        super().train(mode)
        if self.frozen:
            self.tower.eval()
        return self

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        _check_images(images, None)
        pixels = ((images - self.mean) / self.std).to(next(self.tower.parameters()).dtype)
        kw = {}
        if self._interpolate and self.image_size and tuple(images.shape[2:]) != (self.image_size,) * 2:
            kw["interpolate_pos_encoding"] = True
        x = self.tower(pixel_values=pixels, **kw).last_hidden_state
        if x.dim() == 4:  # convolutional towers: (B, C, h, w) feature maps
            rows, cols = x.shape[2], x.shape[3]
            x = x.flatten(2).transpose(1, 2)
        elif self.patch_size:
            rows, cols = images.shape[2] // self.patch_size, images.shape[3] // self.patch_size
        else:
            rows, cols = None, None
        if self.encoder is not None:
            if rows is None or x.shape[1] < rows * cols:
                raise ValueError(
                    f"cannot place the tower's {x.shape[1]} output tokens on a patch grid for the "
                    "dual-stream / TiTok blocks: set use_vision_dual_stream and use_vision_titok to false"
                )
            # prefix tokens (e.g. CLIP's class token) sit at the origin like the latents
            coords = grid_coords(rows, cols, device=x.device)
            coords = torch.cat((coords.new_zeros(x.shape[1] - rows * cols, 2), coords))
            x = self.post_layernorm(self.encoder(x, coords))
        return EncoderOutput(x, None, {"grid": (rows, cols)})


def _load_tower(cfg: VisionEncoderConfig) -> tuple[nn.Module, list[float], list[float]]:
    from transformers import AutoModel

    path = Path(cfg.vision_model_name).expanduser()
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"vision_model_name {str(path)!r}: cannot load a transformers model from it: {exc}") from exc
    tower = getattr(model, "vision_model", model)  # the vision half of a dual encoder (SiglipModel, CLIPModel)
    if not isinstance(tower, nn.Module) or "pixel_values" not in inspect.signature(tower.forward).parameters:
        raise ValueError(
            f"vision_model_name {str(path)!r} holds a {type(model).__name__}, which takes no pixel_values: "
            "not a vision model"
        )
    if getattr(tower, "use_head", False):  # SigLIP's pooling head: unused (we return the tokens)
        tower.use_head = False
        del tower.head
    mean, std = [0.5] * 3, [0.5] * 3
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        spec = json.loads(pre.read_text(encoding="utf-8"))
        mean, std = spec.get("image_mean", mean), spec.get("image_std", std)
    return tower, list(map(float, mean)), list(map(float, std))


def build_vision_encoder(cfg: VisionEncoderConfig) -> nn.Module:
    """The encoder ``cfg`` describes: :class:`VisionEncoder` from scratch, or
    :class:`PretrainedVisionEncoder` around the local HF model in ``vision_model_name``."""
    if not cfg.vision_model_name:
        return VisionEncoder(cfg)
    tower, mean, std = _load_tower(cfg)
    return PretrainedVisionEncoder(tower, cfg, mean, std)
