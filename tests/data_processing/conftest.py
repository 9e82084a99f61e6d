"""Fixtures of the data_processing tests (helpers live in dp_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def trained_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab 8000) trained on a slice of the stdlib prose corpus and
    saved, then loaded back with AutoTokenizer (the way downstream code gets it)."""
    from xoron_pipelines.data import stdlib_corpus, tokenizer_training
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset
    from xoron_pipelines.pipelines.data_processing.params import StdlibCorpus

    texts = [r["text"] for r in stdlib_corpus.iter_rows("code", StdlibCorpus(max_bytes=300_000))]
    tok = tokenizer_training.train_bpe(texts, vocab_size=8000, min_frequency=2)
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    ds = HFTokenizerDataset(str(path))
    ds.save(tokenizer_training.wrap(tok, model_max_length=256))
    return ds.load()


@pytest.fixture(autouse=True)
def _staging_in_tmp(tmp_path, monkeypatch):
    """Library calls stage shards under the system temp dir; keep them in the test's tmp_path."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
