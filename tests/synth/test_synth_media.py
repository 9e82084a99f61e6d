"""The procedural media corpus: balanced scene counts, every knob taking effect, valid decodable
records, held-out items disjoint from training by construction, reproducible streams."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from xoron_pipelines.data import media
from xoron_pipelines.pipelines.synth import nodes
from xoron_pipelines.pipelines.synth.params import Params
from xoron_pipelines.synth.media import corpus, scenes

SMALL = {
    "seed": 7,
    "image": {"counts": {"train": 24, "heldout": 12}, "size": [24, 40]},
    "video": {"counts": {"train": 10, "heldout": 5}, "size": [16, 24], "frames": 5},
    "audio": {"counts": {"train": 30, "heldout": 10}, "speakers": {"train": 3, "heldout": 2}, "max_words": 2},
    "progress": False,
}


def _layout(attributes: str) -> str:
    """Attributes + layout of a scene / clip (everything its rendering depends on)."""
    return json.dumps(json.loads(attributes), sort_keys=True)


def test_scene_counts_are_balanced_and_size_carries_no_count_cue():
    rng = np.random.default_rng(0)
    specs = [scenes.sample_scene(rng, (32, 32)) for _ in range(900)]
    counts = Counter(s.count for s in specs)
    assert sorted(counts) == [1, 2, 3] and min(counts.values()) > 250, (
        counts
    )  # ~300 each (three objects used to fail: ~1 %)
    radius = {c: np.mean([s.objects[0].r for s in specs if s.count == c]) for c in (1, 2, 3)}
    assert max(radius.values()) - min(radius.values()) < 0.05 * radius[1], radius
    for spec in specs[:60]:  # still exactly recoverable
        found = scenes.analyse_scene(scenes.render_scene(spec))
        assert (found["count"], found["position"]) == (spec.count, spec.position)


def test_a_shape_tie_goes_to_the_largest_object_in_every_process():
    """Two objects of one colour, two shapes: the larger one's shape is read, whatever the order
    the objects are found in (a ``max(set(...))`` tie-break followed the process's string hashing)."""
    from PIL import Image, ImageDraw

    colour = scenes.COLOURS["red"]
    for big, small, big_left in (
        ("circle", "triangle", True),
        ("triangle", "circle", False),
        ("square", "circle", True),
    ):
        img = Image.new("RGB", (32, 32), scenes.BACKGROUND)
        canvas = ImageDraw.Draw(img)
        scenes.draw(canvas, big, colour, scenes.Obj(8 if big_left else 24, 16, 5))
        scenes.draw(canvas, small, colour, scenes.Obj(24 if big_left else 8, 16, 3))
        found = scenes.analyse_scene(np.asarray(img))
        assert found["count"] == 2 and sorted(o["shape"] for o in found["objects"]) == sorted([big, small])
        assert found["shape"] == big
    assert scenes.majority(["b", "a", "a", "b"]) == "b" and scenes.majority(["a", "b"]) == "a"


def test_media_nodes_honour_every_knob_and_write_valid_records():
    params = {"media": SMALL}
    image, video, audio = (
        fn(params) for fn in (nodes.synth_media_image, nodes.synth_media_video, nodes.synth_media_audio)
    )
    for df, modality, (n_train, n_heldout) in (
        (image, "image", (24, 12)),
        (video, "video", (10, 5)),
        (audio, "audio", (30, 10)),
    ):
        assert list(df.columns) == list(media.MEDIA_COLUMNS)
        assert df["split"].value_counts().to_dict() == {"train": n_train, "heldout": n_heldout}
        assert df["id"].is_unique and (df["modality"] == modality).all() and (df["source"] == "synth").all()
        for rec in df.to_dict("records"):
            media.check_record(rec)
            assert rec["caption"]
    for rec in image.to_dict("records"):
        pixels = media.decode(rec)
        assert pixels.shape == (24, 40, 3) and (rec["height"], rec["width"]) == (24, 40)
        spec_count = json.loads(rec["attributes"])["count"]
        assert rec["caption"].split()[0] == scenes.NUMBERS[spec_count - 1]
        assert scenes.analyse_scene(pixels)["colour"] == json.loads(rec["attributes"])["colour"]
    for rec in video.to_dict("records"):
        assert media.decode(rec).shape == (5, 16, 24, 3) and rec["frames"] == 5
    # every question kind equally often (+-1) per split
    kinds = Counter(image.loc[image.split == "train", "question"])
    assert len(kinds) == 4 and max(kinds.values()) - min(kinds.values()) <= 1
    for rec in audio.to_dict("records"):
        wave = media.decode(rec)
        attrs = json.loads(rec["attributes"])
        assert rec["caption"] == " ".join(attrs["words"]) and 1 <= len(attrs["words"]) <= 2
        assert rec["sample_rate"] == 16000 and abs(rec["duration_s"] - wave.size / 16000) < 1e-6
        assert set(attrs["words"]) <= set(corpus.speech.VOCABULARY)
    spk = {split: set(audio.loc[audio.split == split, "speaker"]) for split in ("train", "heldout")}
    assert len(spk["train"]) <= 3 and len(spk["heldout"]) <= 2 and not spk["train"] & spk["heldout"]
    assert len(spk["train"]) >= 2  # 30 phrases over 3 speakers
    voices = {json.dumps(json.loads(a)["speaker"], sort_keys=True) for a in audio["attributes"]}
    assert len(voices) == len(spk["train"]) + len(spk["heldout"])  # distinct voices, not only ids


def test_heldout_never_repeats_a_training_item(monkeypatch):
    df = nodes.synth_media_image({"media": {**SMALL, "image": {"counts": {"train": 300, "heldout": 300}}}})
    train = set(map(_layout, df.loc[df.split == "train", "attributes"]))
    assert not train & set(map(_layout, df.loc[df.split == "heldout", "attributes"]))
    # a held-out stream equal to the training stream would repeat every item: each is redrawn
    monkeypatch.setitem(corpus.STREAMS, ("image", "heldout"), corpus.STREAMS[("image", "train")])
    monkeypatch.setitem(corpus.STREAMS, ("video", "heldout"), corpus.STREAMS[("video", "train")])
    rows, report = corpus.image_records({"train": 20, "heldout": 20}, (32, 32), seed=3)
    keys = {s: {corpus.pixel_key(media.decode(r)) for r in rows if r["split"] == s} for s in ("train", "heldout")}
    assert len(keys["heldout"]) == 20 and not keys["train"] & keys["heldout"] and report["heldout_redrawn"] >= 20
    rows, report = corpus.video_records({"train": 10, "heldout": 10}, (16, 16), 4, seed=3)
    train = {_layout(r["attributes"]) for r in rows if r["split"] == "train"}
    assert not train & {_layout(r["attributes"]) for r in rows if r["split"] == "heldout"}
    assert report["heldout_redrawn"] >= 10


def test_streams_are_seeded_and_independent():
    a = nodes.synth_media_video({"media": SMALL})
    assert a.equals(nodes.synth_media_video({"media": SMALL}))  # same seed: identical table
    more_images = {**SMALL, "image": {**SMALL["image"], "counts": {"train": 99, "heldout": 1}}}
    assert a.equals(nodes.synth_media_video({"media": more_images}))  # other counts leave it unchanged
    other = nodes.synth_media_video({"media": {**SMALL, "seed": 8}})
    assert not a["media"].equals(other["media"])
    fewer = nodes.synth_media_video(
        {"media": {**SMALL, "video": {**SMALL["video"], "counts": {"train": 10, "heldout": 0}}}}
    )
    assert fewer.equals(a[a.split == "train"])  # held-out rows come from their own stream
    empty = nodes.synth_media_audio({"media": {**SMALL, "audio": {"counts": {"train": 0, "heldout": 0}}}})
    assert len(empty) == 0 and list(empty.columns) == list(media.MEDIA_COLUMNS)


@pytest.mark.parametrize(
    "media_params, key",
    [
        ({"image": {"size": [8, 32]}}, "image"),
        ({"video": {"frames": 1}}, "video.frames"),
        ({"audio": {"speakers": {"train": 0, "heldout": 2}}}, "speakers.train must be >= 1"),
        ({"image": {"counts": {"train": -1}}}, "image.counts.train"),
        ({"audio": {"voices": 3}}, "audio.voices"),
    ],
)
def test_bad_media_knobs_are_refused(media_params, key):
    with pytest.raises(ValidationError, match=key):
        Params.model_validate({"media": media_params})
