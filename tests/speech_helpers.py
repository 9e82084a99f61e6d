"""Helpers of the speech generation tests (a uniquely named module: test dirs share sys.path):
a media audio table spoken by :func:`~xoron_pipelines.synth.media.speech.speak`, a tokenizer
covering the vocabulary and a nano LLM."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from xoron_pipelines.data.media import MEDIA_COLUMNS, encode_audio
from xoron_pipelines.synth.media.speech import VOCABULARY, sample_speaker, speak


def audio_table(
    n_train: int, n_heldout: int, train_speakers: int, heldout_speakers: int, seed: int = 0, max_words: int = 3
) -> pd.DataFrame:
    """Rows of ``MEDIA_COLUMNS``: train clips by ``train_speakers`` voices, held-out clips by
    ``heldout_speakers`` other voices, transcripts of 1..max_words vocabulary words."""
    rows = []
    for split, n, n_spk, stream in (("train", n_train, train_speakers, 1), ("heldout", n_heldout, heldout_speakers, 2)):
        rng = np.random.default_rng([seed, stream])
        speakers = [sample_speaker(rng, f"{split}{k:02d}") for k in range(n_spk)]
        for i in range(n):
            spk = speakers[i % n_spk]
            words = [str(w) for w in rng.choice(VOCABULARY, size=int(rng.integers(1, max_words + 1)))]
            wave, _ = speak(words, spk, rng=rng)
            rows.append({
                "id": f"{split}-{i:04d}", "modality": "audio", "split": split, "source": "test",
                "media": encode_audio(wave), "width": 0, "height": 0, "frames": 0, "sample_rate": 16000,
                "duration_s": wave.size / 16000, "caption": " ".join(words), "question": "", "answer": "",
                "choices": "", "speaker": spk.id, "attributes": spk.attributes(),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(MEDIA_COLUMNS))


@lru_cache(maxsize=1)
def tokenizer():
    from xoron_pipelines.data.tokenizer_training import train_bpe, wrap

    texts = [" ".join(VOCABULARY)] * 20 + ["the quick brown fox jumps over the lazy dog"] * 5
    return wrap(train_bpe(texts, vocab_size=300, min_frequency=1), model_max_length=64)


def llm(seed: int = 0):
    import torch

    from xoron_pipelines.model import XoronForCausalLM, get_config

    torch.manual_seed(seed)
    cfg = get_config("nano", vocab_size=len(tokenizer()), num_layers=1, hidden_size=32, num_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    return XoronForCausalLM(cfg).eval()
