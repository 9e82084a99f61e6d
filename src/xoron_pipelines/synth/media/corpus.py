"""The procedural media corpus as media records (:data:`xoron_pipelines.data.media.MEDIA_COLUMNS`):
rendered scenes, clips and spoken phrases, train and held-out, written by the ``synth`` pipeline.

Streams: every (modality, split) draws from its own generator ``numpy.random.default_rng([seed,
stream])`` (:data:`STREAMS`), so changing one count leaves the other tables unchanged and the
held-out items never come from the training stream. Disjointness where it matters:

- images / clips: a held-out item whose rendering equals a training item's pixel for pixel (same
  attributes and layout) is drawn again (``rejected`` counts them);
- audio: held-out phrases are spoken by held-out speakers only (their own ids and voices, from
  their own stream).

One row per item with one question: an item's media appears once per table (no duplicated
bytes, independent held-out items for the evaluation's confidence intervals); the question kind
cycles through a shuffled balanced sequence, so every kind is asked equally often (±1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xoron_pipelines.data import media

from . import clips, scenes, speech

#: (modality, split) -> stream id of ``default_rng([seed, stream])``
STREAMS: dict[tuple[str, str], int] = {
    ("image", "train"): 101,
    ("image", "heldout"): 102,
    ("video", "train"): 201,
    ("video", "heldout"): 202,
    ("audio", "train"): 301,
    ("audio", "heldout"): 302,
    ("speakers", "train"): 311,
    ("speakers", "heldout"): 312,
}
SOURCE = "synth"
MAX_REDRAWS = 1000  # per item: a held-out item colliding with training this often means the space is too small


def stream(seed: int, modality: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[(modality, split)]])


def _balanced(rng: np.random.Generator, n: int, kinds: int) -> np.ndarray:
    """``n`` question kinds in [0, kinds): each equally often (±1), in shuffled order."""
    return rng.permutation(np.resize(np.arange(kinds), n))


def pixel_key(pixels: np.ndarray) -> bytes:
    """Identity of a rendering (shape + pixels): two items with equal keys look exactly alike."""
    return hashlib.sha1(repr(pixels.shape).encode() + pixels.tobytes()).digest()


def _visual(
    modality: str,
    n: int,
    split: str,
    seed: int,
    sample: Callable[[np.random.Generator], Any],
    render: Callable[[Any], np.ndarray],
    describe: Callable[[Any], str],
    qa: Callable[[Any], list],
    encode: Callable[[np.ndarray], bytes],
    exclude: set[bytes],
    progress: bool,
) -> tuple[list[dict[str, Any]], set[bytes], int]:
    rng = stream(seed, modality, split)
    kinds = _balanced(rng, n, len(qa(sample(np.random.default_rng(0)))))
    rows, keys, rejected = [], set(), 0
    for i in tqdm(range(n), desc=f"synth {modality} {split}", disable=not progress):
        for _ in range(MAX_REDRAWS):
            spec = sample(rng)
            pixels = render(spec)
            key = pixel_key(pixels)
            if key not in exclude:
                break
            rejected += 1
        else:
            raise ValueError(
                f"synth media {modality}: {MAX_REDRAWS} held-out draws in a row equal training items; "
                f"the {modality} space at this size is too small for the counts asked"
            )
        keys.add(key)
        question, answer, choices = qa(spec)[int(kinds[i])]
        frames = pixels.shape[0] if pixels.ndim == 4 else 0
        rows.append(
            media.record(
                id=f"synth-{modality}-{split}-{i:06d}",
                modality=modality,
                split=split,
                source=SOURCE,
                media=encode(pixels),
                width=int(pixels.shape[-2]),
                height=int(pixels.shape[-3]),
                frames=int(frames),
                caption=describe(spec),
                question=question,
                answer=answer,
                choices=json.dumps(choices),
                attributes=spec.attributes(),
            )
        )
    return rows, keys, rejected


def image_records(
    counts: dict[str, int], size: tuple[int, int], seed: int, progress: bool = False
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rendered scenes: ``counts = {"train": n, "heldout": m}`` rows of ``size`` (H, W); caption =
    :func:`scenes.describe`, one of :func:`scenes.qa_pairs`; plus a report (rejected held-out draws)."""

    def sample(rng):
        return scenes.sample_scene(rng, size)

    args = (sample, scenes.render_scene, scenes.describe, scenes.qa_pairs, media.encode_image)
    train, keys, _ = _visual("image", counts["train"], "train", seed, *args, exclude=set(), progress=progress)
    heldout, _, rejected = _visual("image", counts["heldout"], "heldout", seed, *args, exclude=keys, progress=progress)
    return train + heldout, {"heldout_redrawn": rejected}


def video_records(
    counts: dict[str, int], size: tuple[int, int], frames: int, seed: int, progress: bool = False
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Clips of one moving object, ``frames`` x ``size``; caption = :func:`clips.describe`, one of
    :func:`clips.qa_pairs`; plus a report (rejected held-out draws)."""

    def sample(rng):
        return clips.sample_clip(rng, size, frames)

    args = (sample, clips.render_clip, clips.describe, clips.qa_pairs, media.encode_video)
    train, keys, _ = _visual("video", counts["train"], "train", seed, *args, exclude=set(), progress=progress)
    heldout, _, rejected = _visual("video", counts["heldout"], "heldout", seed, *args, exclude=keys, progress=progress)
    return train + heldout, {"heldout_redrawn": rejected}


def speakers(n: int, split: str, seed: int) -> list[speech.Speaker]:
    """The ``n`` speakers of a split, ids ``<split>-spk<k>``, voices from the split's own stream."""
    rng = stream(seed, "speakers", split)
    return [speech.sample_speaker(rng, speaker_id=f"{split}-spk{k:03d}") for k in range(n)]


def phrases(rng: np.random.Generator, n: int, max_words: int) -> Iterator[list[str]]:
    """``n`` phrases of 1..``max_words`` distinct vocabulary words, uniformly (no grammar, so a
    transcript cannot be guessed from its first word)."""
    for _ in range(n):
        k = int(rng.integers(1, max_words + 1))
        yield [str(w) for w in rng.choice(speech.VOCABULARY, size=k, replace=False)]


def audio_records(
    counts: dict[str, int],
    num_speakers: dict[str, int],
    max_words: int,
    seed: int,
    sample_rate: int = media.SAMPLE_RATE,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Spoken phrases (caption = transcript) by speakers sampled uniformly from the split's own
    speakers (``num_speakers = {"train": k, "heldout": j}``); attributes: words, their sample
    bounds and the speaker's voice."""
    rows: list[dict[str, Any]] = []
    for split in ("train", "heldout"):
        n = counts[split]
        if n and not num_speakers[split]:
            raise ValueError(f"synth media audio: {n} {split} utterances need at least one {split} speaker")
        voices = speakers(num_speakers[split], split, seed)
        rng = stream(seed, "audio", split)
        for i, words in enumerate(
            tqdm(phrases(rng, n, max_words), total=n, desc=f"synth audio {split}", disable=not progress)
        ):
            spk = voices[int(rng.integers(len(voices)))]
            wave, bounds = speech.speak(words, spk, sample_rate=sample_rate, rng=rng)
            rows.append(
                media.record(
                    id=f"synth-audio-{split}-{i:06d}",
                    modality="audio",
                    split=split,
                    source=SOURCE,
                    media=media.encode_audio(wave, sample_rate),
                    sample_rate=sample_rate,
                    duration_s=wave.size / sample_rate,
                    caption=" ".join(words),
                    speaker=spk.id,
                    attributes={"words": words, "bounds": bounds, "speaker": json.loads(spk.attributes())},
                )
            )
    return rows, {}
