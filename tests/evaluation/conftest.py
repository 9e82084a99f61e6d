"""Fixtures of the evaluation tests: a tiny tokenizer and a tiny saved nano-style model."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer (~600 ids, all special tokens) saved and loaded back."""
    from xoron_pipelines.data import tokenizer_training as tt
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset

    texts = [f"def f{i}(x):\n    return x + {i}\n" for i in range(40)]
    texts += [f"Question: what is {i} plus {i}? Answer: {2 * i}." for i in range(40)]
    ds = HFTokenizerDataset(str(tmp_path_factory.mktemp("tok") / "tokenizer"))
    ds.save(tt.wrap(tt.train_bpe(texts, vocab_size=600, min_frequency=1), model_max_length=128))
    return ds.load()


def make_model(vocab_size: int, seed: int = 0, preset: str = "nano", max_positions: int = 128):
    """A 1-layer, 32-wide model of the ``nano`` preset family (random weights, eval mode)."""
    import torch

    from xoron_pipelines.model import XoronForCausalLM, get_config

    torch.manual_seed(seed)
    config = get_config(preset, vocab_size=vocab_size, num_layers=1, hidden_size=32, num_heads=2,
                        intermediate_size=64, max_position_embeddings=max_positions)
    return XoronForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_model(len(tiny_tokenizer))
