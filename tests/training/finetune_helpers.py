"""Shared fixtures of the fine-tuning tests (SFT, LoRA, DPO): a small chat tokenizer built the
way the data pipeline builds one, and CPU-sized Xoron models."""

from __future__ import annotations

from functools import lru_cache

import torch

from xoron_pipelines import model as model_lib
from xoron_pipelines.data.tokenizer_training import train_bpe, wrap

CORPUS = [
    "The answer is four. Two plus two is four, not five.",
    "hello world, this is a small test of the chat tokenizer",
    "def add(a, b): return a + b  # prints 3",
    "I am not sure. Let me think step by step about the question.",
] * 10


@lru_cache(maxsize=1)
def chat_tokenizer():
    """Byte-level BPE (400 ids) with every registry special token and the chat template."""
    return wrap(train_bpe(CORPUS, vocab_size=400))


def nano_model(preset: str = "nano", seed: int = 0, **overrides) -> model_lib.XoronForCausalLM:
    """A tiny Xoron model of ``preset`` (2 layers, vocab 512, no dropout)."""
    kw = {"num_layers": 2, "vocab_size": 512, "dropout": 0.0, **overrides}
    torch.manual_seed(seed)
    return model_lib.XoronForCausalLM(model_lib.get_config(preset, **kw))
