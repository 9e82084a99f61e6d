"""Stub models for the evaluation tests: logits fixed by hand, so log-likelihoods are known."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class TableLM(torch.nn.Module):
    """Logits at every position depend only on the current token: ``table[token]`` (V, V)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.float(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])
