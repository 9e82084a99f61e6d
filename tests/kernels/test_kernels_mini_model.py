"""A tiny 2-layer LM built from the kernels trains identically with impl="triton" and "torch"."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from xoron_pipelines import kernels

VOCAB, HIDDEN, HEADS, INTER, LAYERS, SEQ, BATCH = 97, 32, 2, 48, 2, 11, 2
HEAD_DIM = HIDDEN // HEADS


def _rope_tables(seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / 10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    emb = torch.cat([torch.arange(seq).float()[:, None] * inv] * 2, dim=-1)[None]
    return emb.cos(), emb.sin()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_norm = nn.Parameter(1 + 0.1 * torch.randn(HIDDEN))
        self.post_norm = nn.Parameter(1 + 0.1 * torch.randn(HIDDEN))
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN, bias=False)
        self.o = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.gate_up = nn.Linear(HIDDEN, 2 * INTER, bias=False)
        self.down = nn.Linear(INTER, HIDDEN, bias=False)

    def forward(self, x, cos, sin, impl):
        b, t, _ = x.shape
        h = kernels.rms_norm(x, self.input_norm, 1e-6, impl=impl)
        q, k, v = self.qkv(h).view(b, t, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        q, k = kernels.apply_rope(q, cos, sin, impl=impl), kernels.apply_rope(k, cos, sin, impl=impl)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, HIDDEN))
        gate, up = self.gate_up(kernels.rms_norm(x, self.post_norm, 1e-6, impl=impl)).chunk(2, dim=-1)
        return x + self.down(kernels.swiglu(gate, up, impl=impl))


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.Parameter(torch.ones(HIDDEN))
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def loss(self, ids, labels, impl):
        cos, sin = _rope_tables(ids.shape[1])
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, impl)
        x = kernels.rms_norm(x, self.norm, 1e-6, impl=impl)
        return kernels.fused_linear_cross_entropy(
            x.reshape(-1, HIDDEN), self.lm_head.weight, labels.reshape(-1), chunk_size=7, impl=impl
        )


def _train(model: TinyLM, impl: str, batches) -> list[float]:
    # Adam divides by sqrt(v) + eps: with the default eps a float-noise gradient (about 1e-10,
    # e.g. a query at position 0, which attends only to itself) becomes a full +-lr step whose
    # sign is noise. eps=1e-5 keeps such entries small while real gradients (1e-3..1e-1) still
    # get Adam-normalised steps.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-5)
    losses = []
    for ids, labels in batches:
        loss = model.loss(ids, labels, impl)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_five_adamw_steps_match_between_triton_and_torch():
    torch.manual_seed(0)
    model = TinyLM()
    twin = copy.deepcopy(model)
    batches = []
    for _ in range(5):
        # learnable data: every sequence counts up by one from a random start
        ids = (torch.randint(0, VOCAB, (BATCH, 1)) + torch.arange(SEQ)) % VOCAB
        labels = torch.roll(ids, -1, dims=1)
        labels[:, -1] = -100  # no target for the last position
        batches.append((ids, labels))
    losses_triton = _train(model, "triton", batches)
    losses_torch = _train(twin, "torch", batches)
    assert losses_torch[-1] < losses_torch[0]  # it actually trains
    for a, b in zip(losses_triton, losses_torch):
        assert abs(a - b) <= 1e-4, (losses_triton, losses_torch)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert (p - q).abs().max() <= 1e-4, name
