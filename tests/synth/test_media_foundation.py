"""Media codecs round-trip and refuse bad bytes with a reason; the procedural analysers recover
exactly what the renderers drew (they are the checkers of generated media)."""

import json

import numpy as np
import pytest

from xoron_pipelines.data import media
from xoron_pipelines.synth.media import clips, scenes, speech


def test_codecs_round_trip_and_name_what_is_wrong():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    assert np.array_equal(media.decode_image(media.encode_image(img)), img)
    vid = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    assert np.array_equal(media.decode_video(media.encode_video(vid)), vid)
    wave = (np.sin(np.arange(1600) / 5) * 0.5).astype(np.float32)
    back, sr = media.decode_audio(media.encode_audio(wave, 16000))
    assert sr == 16000 and np.abs(back - wave).max() < 1e-4
    assert media.resample(back, 8000).shape == (3200,)
    for fn, data, reason in (
        (media.decode_image, b"not a png", "undecodable image"),
        (media.decode_video, b"\x93NUMPY junk", "undecodable video"),
        (media.decode_video, media.encode_video(vid)[:-10], "undecodable video"),
        (media.decode_audio, b"RIFF....", "undecodable audio"),
        (media.decode_image, b"", "empty"),
    ):
        with pytest.raises(media.MediaError, match=reason):
            fn(data)
    with pytest.raises(media.MediaError, match="uint8"):
        media.encode_video(vid.astype(np.float32))
    rec = media.record(id="a", modality="image", split="train", answer="red", choices=["red", "blue"])
    media.check_record(rec)
    with pytest.raises(media.MediaError, match="containing the answer"):
        media.check_record({**rec, "choices": json.dumps(["blue"])})


def test_scene_analyser_recovers_every_attribute_at_every_scale():
    rng = np.random.default_rng(1)
    for i in range(120):
        spec = scenes.sample_scene(rng, [(32, 32), (48, 64), (64, 64), (96, 96)][i % 4])
        found = scenes.analyse_scene(scenes.render_scene(spec))
        assert (found["colour"], found["shape"], found["count"], found["position"]) == (
            spec.colour, spec.shape, spec.count, spec.position,
        ), spec  # fmt: skip
        assert scenes.describe(spec).split()[1] == spec.colour
    blank = np.full((32, 32, 3), scenes.BACKGROUND, np.uint8)
    assert scenes.analyse_scene(blank)["count"] == 0


def test_clip_analyser_recovers_motion():
    rng = np.random.default_rng(2)
    hits = 0
    for i in range(120):
        spec = clips.sample_clip(rng, [(32, 32), (48, 48)][i % 2], [8, 16][i % 2])
        found = clips.analyse_clip(clips.render_clip(spec))
        got = (found["colour"], found["shape"], found["direction"], found["speed"], found["bounce"])
        hits += got == (spec.colour, spec.shape, spec.direction, spec.speed, spec.bounce)
    assert hits >= 118  # one or two fast clips on the smallest canvas may read as slow


def test_speech_is_deterministic_per_speaker_and_pitch_is_recoverable():
    rng = np.random.default_rng(3)
    low, high = speech.Speaker("a", 100.0, 1.0, 1.0, 0.0), speech.Speaker("b", 200.0, 1.0, 1.0, 0.0)
    a, bounds = speech.speak("red circle", low, rng=np.random.default_rng(0))
    again, _ = speech.speak("red circle", low, rng=np.random.default_rng(0))
    assert np.array_equal(a, again) and len(bounds) == 2 and bounds[0][1] <= bounds[1][0]
    b, _ = speech.speak("red circle", high, rng=np.random.default_rng(0))
    assert abs(speech.estimate_pitch(a) - 100) < 5 and abs(speech.estimate_pitch(b) - 200) < 10
    assert speech.sample_speaker(rng).id != speech.sample_speaker(rng).id
