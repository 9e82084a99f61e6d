"""The generator evaluation: real items adhere perfectly, the shuffled-prompt baseline does not,
the Fréchet distance separates sets, and the knobs of the stage take effect."""

from __future__ import annotations

import numpy as np
import pytest
from gen_helpers import media_table

from xoron_pipelines.data.media import decode_image, decode_video
from xoron_pipelines.evaluation.media_generation import (
    derangement,
    evaluate_generator,
    feature_net,
    features,
    frechet_distance,
    truth,
)


def test_derangement_has_no_fixed_point():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 50):
        perm = derangement(n, rng)
        assert sorted(perm) == list(range(n)) and (perm != np.arange(n)).all()


@pytest.mark.parametrize("kind", ["image", "video"])
def test_real_items_adhere_and_the_baselines_do_not(kind):
    table = media_table(kind, 0, 40, (32, 32))
    rows = table[table["split"] == "heldout"]
    decode = decode_image if kind == "image" else decode_video
    items = np.stack([decode(m) for m in rows["media"]])
    truths = [truth(kind, a) for a in rows["attributes"]]
    prompts = list(rows["caption"])
    by_prompt = dict(zip(prompts, items, strict=False))
    background = np.full_like(items[:1], 235).repeat(len(items), 0)

    def oracle(ps, scale, unconditional):  # a "generator" that returns the real item of each prompt
        return background if unconditional else np.stack([by_prompt[p] for p in ps])

    report = evaluate_generator(kind, oracle, prompts, truths, items[:20], items[20:], 3.0, seed=0)
    main = "direction" if kind == "video" else "colour"
    assert report["adherence"][main]["rate"] == 1.0 and report["adherence_cfg_1"][main]["rate"] == 1.0
    assert report["shuffled_prompt_baseline"][main]["rate"] < 0.6
    assert report["unconditional_baseline"][main]["rate"] == 0.0  # a blank canvas shows nothing
    assert report["adherence"]["all"]["low"] < 1.0 == report["adherence"]["all"]["high"]  # Wilson, n = 40
    assert report["frechet"]["generated_vs_real"] < report["frechet"]["unconditional_vs_real"]


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) < frechet_distance(a, b + 2.0)
    net = feature_net(0)
    imgs = rng.integers(0, 255, size=(3, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(features(imgs, net), features(imgs, feature_net(0)))  # fixed by the seed
    assert features(imgs, net).shape == (3, 64)
