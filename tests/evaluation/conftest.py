"""Fixtures of the evaluation tests: a tiny tokenizer and a tiny saved nano-style model."""

from __future__ import annotations

import pytest
from eval_helpers import make_model


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


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_model(len(tiny_tokenizer))
