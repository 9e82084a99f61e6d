"""Position encodings: rotary (plain, linear-scaled, YaRN) and learned absolute positions.

YaRN follows the YaRN paper (Peng et al., 2023, sec. 3.2) exactly as transformers'
``_compute_yarn_parameters`` implements it: for rotary pair ``i`` with ``r_i`` = number of
rotations over the original context, pairs with ``r_i > beta_fast`` (high frequencies, short
wavelengths) keep their frequency, pairs with ``r_i < beta_slow`` (low frequencies, long
wavelengths) are interpolated by ``1/factor``, with a linear ramp over the pair index in between.
The attention temperature ``mscale = 0.1 * ln(factor) + 1`` scales cos/sin (so q.k by mscale^2);
with DeepSeek's ``mscale``/``mscale_all_dim`` the cos/sin factor is their ratio and MLA's softmax
scale gets ``get_mscale(factor, mscale_all_dim)^2`` (see :func:`softmax_scale`).

Rotation uses the HF ``rotate_half`` convention (``kernels.apply_rope``) for every attention type,
MLA included; a DeepSeek-V3 export therefore sets ``rope_interleave=False``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xoron_pipelines import kernels


def get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN attention temperature ``0.1 * mscale * ln(scale) + 1`` (1 when scale <= 1)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _scaling(config) -> dict | None:
    rs = config.rope_scaling
    if rs is None:
        return None
    return {**rs, "type": rs.get("type", rs.get("rope_type"))}


def _yarn_inv_freq(base_inv: torch.Tensor, dim: int, base: float, rs: dict) -> torch.Tensor:
    """Blend interpolated (``/factor``) and original frequencies with YaRN's ramp over pair index."""
    factor = float(rs["factor"])
    orig = rs["original_max_position_embeddings"]
    beta_fast, beta_slow = float(rs.get("beta_fast") or 32.0), float(rs.get("beta_slow") or 1.0)

    def correction_dim(num_rotations: float) -> float:
        # pair index whose wavelength fits ``num_rotations`` times into the original context
        return dim * math.log(orig / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1 -> original frequency (high freq), 0 -> interpolated (low freq)
    return base_inv / factor * (1.0 - keep) + base_inv * keep


def rope_inv_freq(config) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (rope_dim/2,) and the cos/sin attention factor for ``config``."""
    dim, base = config.rope_dim, float(config.rope_theta)
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    rs = _scaling(config)
    if rs is None:
        return inv, 1.0
    factor = float(rs["factor"])
    if rs["type"] == "linear":
        return inv / factor, 1.0
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        attn = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
    else:
        attn = get_mscale(factor)
    return _yarn_inv_freq(inv, dim, base, rs), float(attn)


def softmax_scale(config, head_dim: int) -> float:
    """Softmax scale ``head_dim^-0.5``, times DeepSeek's YaRN ``mscale_all_dim`` correction squared."""
    scale = head_dim**-0.5
    rs = _scaling(config)
    if rs is not None and rs["type"] == "yarn" and rs.get("mscale_all_dim"):
        m = get_mscale(float(rs["factor"]), float(rs["mscale_all_dim"]))
        scale *= m * m
    return scale


class RotaryEmbedding(nn.Module):
    """Produces (cos, sin) of shape (B, T, rope_dim) for given position ids."""

    def __init__(self, config) -> None:
        super().__init__()
        inv_freq, self.attention_scaling = rope_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(position_ids.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, impl: str) -> torch.Tensor:
    """Rotate ``x`` (B, heads, T, D) by (cos, sin) of shape (B or 1, T, D) via ``kernels.apply_rope``."""
    return kernels.apply_rope(x, cos, sin, impl=impl)


# ---------------------------------------------------------------------------------------------
# Axial (multi-dimensional) rotary embeddings: 2D-RoPE for image patches (row, col) and 3D-RoPE
# for video tubelets (t, y, x). The head dimension is split into one slice per axis; each slice
# rotates by its own coordinate with the usual 1D frequencies (as Qwen2-VL's M-RoPE and
# EVA / FiT's 2D RoPE do). Relative by construction: shifting every coordinate of an axis by the
# same amount leaves q.k unchanged, so any resolution or aspect ratio works without tables.


def axial_rope_freqs(head_dim: int, num_axes: int, theta: float = 10000.0) -> list[torch.Tensor]:
    """Per-axis inverse frequencies: ``head_dim`` is split into ``num_axes`` even slices (the
    first axes get the remainder in pairs); returns one (slice/2,) tensor per axis."""
    if head_dim % 2:
        raise ValueError(f"axial RoPE needs an even head_dim, got {head_dim}")
    pairs = head_dim // 2
    base, extra = divmod(pairs, num_axes)
    if base == 0:
        raise ValueError(f"head_dim {head_dim} is too small for {num_axes}-axis RoPE (needs >= {2 * num_axes})")
    sizes = [2 * (base + (1 if i < extra else 0)) for i in range(num_axes)]
    return [1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)) for d in sizes]


def axial_rope_cos_sin(coords: torch.Tensor, inv_freqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape (N, head_dim) for integer or float ``coords`` (N, num_axes), in the
    rotate_half layout per axis slice (so :func:`apply_axial_rope` can rotate each slice)."""
    if coords.shape[-1] != len(inv_freqs):
        raise ValueError(f"coords have {coords.shape[-1]} axes, the frequencies {len(inv_freqs)}")
    cos, sin = [], []
    for axis, inv in enumerate(inv_freqs):
        f = coords[:, axis, None].float() * inv.to(coords.device)
        emb = torch.cat((f, f), dim=-1)
        cos.append(emb.cos())
        sin.append(emb.sin())
    return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)


class _AxialRotation(torch.autograd.Function):
    """``x * cos + x[..., perm] * sin_signed``: rotate_half within each axis slice, written as one
    gather (``perm`` swaps the two halves of every slice) so forward and backward are three
    kernels each. The backward is the transposed rotation (``perm`` is its own inverse);
    ``cos`` / ``sin_signed`` are constants (no gradient)."""

    @staticmethod
    def forward(ctx, x, cos, sin_signed, perm):
        ctx.save_for_backward(cos, sin_signed, perm)
        return torch.addcmul(x * cos, x.index_select(-1, perm), sin_signed)

    @staticmethod
    def backward(ctx, grad):
        cos, sin_signed, perm = ctx.saved_tensors
        return torch.addcmul((grad * sin_signed).index_select(-1, perm), grad, cos), None, None, None


def apply_axial_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inv_freqs: list[torch.Tensor]
) -> torch.Tensor:
    """Rotate ``x`` (..., N, head_dim) slice by slice with (cos, sin) (N, head_dim) from
    :func:`axial_rope_cos_sin` (rotate_half convention within each axis slice; cos / sin get no
    gradient)."""
    perm, sign, start = [], [], 0
    for inv in inv_freqs:
        h = inv.numel()
        perm += [*range(start + h, start + 2 * h), *range(start, start + h)]
        sign += [-1.0] * h + [1.0] * h
        start += 2 * h
    perm_t = torch.tensor(perm, device=x.device)
    sin_signed = sin.to(x.dtype) * torch.tensor(sign, device=x.device, dtype=x.dtype)
    return _AxialRotation.apply(x, cos.to(x.dtype), sin_signed, perm_t)


def grid_coords(*sizes: int, device=None) -> torch.Tensor:
    """Integer coordinates (prod(sizes), len(sizes)) of a row-major grid, e.g. ``grid_coords(h, w)``
    for patches or ``grid_coords(t, h, w)`` for tubelets."""
    axes = torch.meshgrid(*[torch.arange(n, device=device) for n in sizes], indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], dim=-1)
