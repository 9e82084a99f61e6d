"""Latent losses (seed 004): masked latent MSE, symmetric InfoNCE over the batch, and the
compression's reconstruction of the encoder embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the latent slots marked ``valid`` (B, L); all slots when None."""
    err = (pred.float() - target.float()).pow(2).mean(-1)
    if valid is None:
        return err.mean()
    w = valid.to(err.dtype)
    return (err * w).sum() / w.sum().clamp(min=1.0)


def pooled(z: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of the valid latents of each row (B, D)."""
    if valid is None:
        return z.mean(1)
    w = valid.to(z.dtype).unsqueeze(-1)
    return (z * w).sum(1) / w.sum(1).clamp(min=1.0)


def info_nce(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, temperature: float = 0.07
) -> torch.Tensor:
    """Symmetric InfoNCE: each row's pooled prediction must pick its own target among the batch's
    (the other rows are the negatives). Zero for a batch of one row (no negatives)."""
    if pred.shape[0] < 2:
        return pred.new_zeros((), dtype=torch.float32)
    a = F.normalize(pooled(pred.float(), valid), dim=-1)
    b = F.normalize(pooled(target.float(), valid), dim=-1)
    logits = a @ b.T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def reconstruction(recon: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """MSE between the decompressed latents and the encoder embedding they came from."""
    return F.mse_loss(recon.float(), embedding.float())
