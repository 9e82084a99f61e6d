"""A tiny causal LM for the training-engine tests: fast on CPU, with the pieces resume must restore.

It has dropout (consumes the torch RNG), a layer norm (no weight decay), and a DeepSeek-style
load-balancing bias: a persistent buffer updated by ``update_moe_bias()`` after each optimizer
step from token statistics gathered in ``forward`` (like the Xoron MoE router). Its forward has
the Xoron signature ``model(input_ids=, labels=, loss_weights=) -> obj with .loss``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 32, hidden: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab)
        self.register_buffer("balance_bias", torch.zeros(vocab))
        self.register_buffer("load", torch.zeros(vocab))
        self.bias_updates = 0

    def forward(self, input_ids, labels=None, loss_weights=None):
        h = self.norm(torch.tanh(self.proj(self.drop(self.embed(input_ids)))))
        logits = self.head(h) + self.balance_bias
        if self.training:
            self.load += torch.bincount(input_ids.reshape(-1), minlength=self.load.numel()).float()
        loss = None
        if labels is not None:
            tgt = labels[:, 1:].reshape(-1)
            ce = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), tgt, reduction="none", ignore_index=-100
            )
            w = (tgt != -100).float()
            if loss_weights is not None:
                w = w * loss_weights[:, 1:].reshape(-1)
            loss = (ce * w).sum() / w.sum()
        return SimpleNamespace(loss=loss, logits=logits)

    def update_moe_bias(self) -> None:
        self.balance_bias -= 1e-3 * torch.sign(self.load - self.load.mean())
        self.load.zero_()
        self.bias_updates += 1
