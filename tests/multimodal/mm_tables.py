"""Small media tables (the MEDIA_COLUMNS schema) made with the lead's procedural generators, for
the multimodal tests: one row per scene / clip / utterance, one QA pair each (drawn in turn)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from xoron_pipelines.data import media
from xoron_pipelines.synth.media import clips, scenes, speech


def _split(i: int, n_train: int) -> str:
    return "train" if i < n_train else "heldout"


def image_table(n_train: int, n_heldout: int, seed: int = 0, size: int = 32, kinds=(0, 1, 2, 3)) -> pd.DataFrame:
    """Scenes with one question each, of the kinds of :func:`scenes.qa_pairs` in ``kinds`` in turn
    (0 colour, 1 shape, 2 count, 3 position)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_heldout):
        spec = scenes.sample_scene(rng, (size, size))
        q, a, choices = scenes.qa_pairs(spec, rng)[kinds[i % len(kinds)]]
        rows.append(
            media.record(
                id=f"img{i}", modality="image", split=_split(i, n_train), source="test",
                media=media.encode_image(scenes.render_scene(spec)), width=size, height=size,
                caption=scenes.describe(spec), question=q, answer=a, choices=choices, attributes=spec.attributes(),
            )
        )  # fmt: skip
    return pd.DataFrame(rows)


def video_table(n_train: int, n_heldout: int, seed: int = 0, size: int = 16, frames: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_heldout):
        spec = clips.sample_clip(rng, (size, size), frames)
        q, a, choices = clips.qa_pairs(spec, rng)[i % 5]
        rows.append(
            media.record(
                id=f"vid{i}", modality="video", split=_split(i, n_train), source="test",
                media=media.encode_video(clips.render_clip(spec)), width=size, height=size, frames=frames,
                caption=clips.describe(spec), question=q, answer=a, choices=choices, attributes=spec.attributes(),
            )
        )  # fmt: skip
    return pd.DataFrame(rows)


def audio_table(n_train: int, n_heldout: int, seed: int = 0, words: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_heldout):
        spk = speech.sample_speaker(rng)
        text = " ".join(speech.VOCABULARY[j] for j in rng.integers(len(speech.VOCABULARY), size=words))
        wave, _ = speech.speak(text, spk, rng=rng)
        rows.append(
            media.record(
                id=f"aud{i}", modality="audio", split=_split(i, n_train), source="test",
                media=media.encode_audio(wave), sample_rate=media.SAMPLE_RATE, duration_s=len(wave) / media.SAMPLE_RATE,
                caption=text, speaker=spk.id, attributes=spk.attributes(),
            )
        )  # fmt: skip
    return pd.DataFrame(rows)
