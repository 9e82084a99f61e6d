"""Multimodal training data: items from media rows, the label mask, seeded multi-scale batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mm_tables import audio_table, image_table, video_table

from xoron_pipelines.data.multiscale import MultiScaleConfig, sample_image_size, sample_video_shape
from xoron_pipelines.training.data import IGNORE_INDEX
from xoron_pipelines.training.multimodal import (
    ItemTokenizer,
    MediaBatchSource,
    decode_media,
    items_of,
    media_digest,
    split_rows,
)


class CharTokenizer:
    """One id per character (ids 4..), bos 1, eos 2, pad 0: enough to check the id layout."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [4 + ord(c) % 200 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 4) for i in ids if i >= 4)


SLOT = [250, 251, 251, 251, 252]  # start marker, pads, end marker (ids no character takes)


def test_items_and_labels_cover_the_targets_only():
    table = image_table(6, 2)
    rows = split_rows(table, "image", "train")
    items = items_of(rows, "image", ["caption", "vqa"])
    assert len(rows) == 6 and len(items) == 12
    assert {i.task for i in items} == {"caption", "vqa"}
    vqa = next(i for i in items if i.task == "vqa")
    assert vqa.target in vqa.choices and vqa.prompt == rows["question"].iloc[vqa.media]
    enc = ItemTokenizer(CharTokenizer(), "image", SLOT)
    ids, labels = enc.example(vqa)
    ctx = [1, *SLOT, *CharTokenizer()(vqa.prompt + "\n")["input_ids"]]
    assert ids[: len(ctx)] == ctx and ids[-1] == 2
    assert labels[: len(ctx)] == [IGNORE_INDEX] * len(ctx)
    assert enc.decode(labels[len(ctx) : -1]) == vqa.target


def test_split_rows_names_what_is_wrong():
    table = image_table(2, 0)
    with pytest.raises(ValueError, match="no 'heldout' rows"):
        split_rows(table, "image", "heldout")
    with pytest.raises(ValueError, match="holds modalities \\['image'\\], expected only 'audio'"):
        split_rows(table, "audio", "train")
    with pytest.raises(ValueError, match="tasks \\['transcribe'\\] do not apply"):
        items_of(table, "image", ["transcribe"])


def test_image_batches_are_seeded_multiscale_and_reproducible():
    table = image_table(12, 0)
    rows = split_rows(table, "image", "train")
    items = items_of(rows, "image", ["vqa"])
    cfg = MultiScaleConfig()
    sampler = lambda step, total, rng: sample_image_size(cfg, step, total, rng)  # noqa: E731
    enc = ItemTokenizer(CharTokenizer(), "image", SLOT)
    a = MediaBatchSource(items, decode_media(rows), enc, 4, seed=7, sample_shape=sampler)
    b = MediaBatchSource(items, decode_media(rows), enc, 4, seed=7, sample_shape=sampler)
    assert len(a) == 3
    sizes = set()
    for epoch in range(4):
        for index in range(len(a)):
            x, y = a.batch(epoch, index), b.batch(epoch, index)
            assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["images"], y["images"])
            rng = np.random.default_rng([7, epoch, index])
            expected = sample_image_size(cfg, epoch * len(a) + index, a.total_micro_steps, rng)
            assert tuple(x["images"].shape) == (4, 3, *expected)
            assert float(x["images"].min()) >= 0 and float(x["images"].max()) <= 1
            assert (x["attention_mask"].sum(1) == (x["input_ids"] != 0).sum(1)).all()
            sizes.add(expected)
    assert len(sizes) > 1  # several scales drawn
    # an epoch visits every item once (batches of 4 over 12 items)
    seen = sorted(i for index in range(len(a)) for i in a.order(1)[index * 4 : (index + 1) * 4])
    assert seen == list(range(12))


def test_video_and_audio_batches():
    vt = video_table(4, 0, frames=4)
    rows = split_rows(vt, "video", "train")
    cfg = MultiScaleConfig()
    src = MediaBatchSource(
        items_of(rows, "video", ["caption"]),
        decode_media(rows),
        ItemTokenizer(CharTokenizer(), "video", SLOT),
        2,
        seed=0,
        sample_shape=lambda s, t, rng: sample_video_shape(cfg, s, t, rng),
    )
    batch = src.batch(0, 1)
    frames, h, w = sample_video_shape(cfg, 1, 1, np.random.default_rng([0, 0, 1]))
    assert tuple(batch["videos"].shape) == (2, frames, 3, h, w)
    at = audio_table(3, 0)
    rows = split_rows(at, "audio", "train")
    src = MediaBatchSource(
        items_of(rows, "audio", ["transcribe"]), decode_media(rows), ItemTokenizer(CharTokenizer(), "audio", SLOT), 3, 0
    )
    batch = src.batch(0, 0)
    waves = decode_media(rows)
    order = src.order(0)
    assert batch["audio_lengths"].tolist() == [len(waves[i]) for i in order]
    assert batch["transcripts"] == [rows["caption"].iloc[i] for i in order]
    assert float(batch["audio"][0, batch["audio_lengths"][0] :].abs().sum()) == 0.0


def test_media_digest_follows_content():
    table = image_table(3, 0)
    other = table.copy()
    other.loc[1, "answer"] = "purple" if other.loc[1, "answer"] != "purple" else "red"
    other.loc[1, "choices"] = json.dumps(sorted({other.loc[1, "answer"], *json.loads(other.loc[1, "choices"])}))
    assert media_digest(table) == media_digest(table.copy())
    assert media_digest(table) != media_digest(other)
