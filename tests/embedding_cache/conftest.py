"""Fixtures of the embedding_cache tests: the packaged MiniLM encoder (loaded once), a tiny
decoder tokenizer, and parameters pointing the cache into a temp dir."""

from __future__ import annotations

import pytest
from ec_helpers import TEXTS


@pytest.fixture(scope="session")
def decoder_tokenizer():
    """A small byte-level BPE decoder tokenizer with the project's special tokens (EOS, PAD)."""
    from xoron_pipelines.data import tokenizer_training

    tok = tokenizer_training.train_bpe(TEXTS * 5, vocab_size=400, min_frequency=1)
    return tokenizer_training.wrap(tok, model_max_length=256)


@pytest.fixture(scope="session")
def encoder_cache():
    """Encoders built once per argument set (loading MiniLM costs ~1 s each time)."""
    return {}


@pytest.fixture()
def shared_encoder(monkeypatch, encoder_cache):
    """Make the nodes reuse encoders across builds; returns the list of constructions asked for."""
    from xoron_pipelines.latent import cache_build
    from xoron_pipelines.latent.encoder import Encoder

    calls = []

    def make(*args):
        calls.append(args)
        if args not in encoder_cache:
            encoder_cache[args] = Encoder(*args)
        return encoder_cache[args]

    monkeypatch.setattr(cache_build, "Encoder", make)
    return calls


@pytest.fixture()
def params(tmp_path):
    """Defaults with the cache in ``tmp_path`` (the tests' catalog saves each subset under
    ``preprocess_cache_dir``, as the check asks) and no progress bars."""
    return {"preprocess_cache_dir": str(tmp_path / "cache"), "progress": False}
