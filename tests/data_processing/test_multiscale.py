"""Multi-scale sampling follows the configured probabilities and strategy; the knobs are validated
by name; resizing keeps dtype / layout and samples frames uniformly."""

import numpy as np
import pytest
from pydantic import ValidationError

from xoron_pipelines.data import multiscale as ms

SEED_000 = dict(  # seed 000's own values
    image_scales=[[128, 128], [192, 192], [256, 256], [320, 320], [384, 384], [448, 448], [512, 512]],
    image_scale_probs=[0.05, 0.10, 0.30, 0.25, 0.15, 0.10, 0.05],
    image_min_size=128, image_max_size=512, image_base_size=256,
    video_scales=[[128, 128], [192, 192], [256, 256], [320, 320], [384, 384]],
    video_scale_probs=[0.10, 0.20, 0.35, 0.25, 0.10],
    video_min_size=128, video_max_size=384, video_base_size=256,
    video_frame_scales=[8, 12, 16, 20, 24, 32],
    video_frame_scale_probs=[0.10, 0.15, 0.30, 0.20, 0.15, 0.10],
    video_min_frames=8, video_max_frames=32, video_base_frames=16,
)  # fmt: skip


def _chi2_ok(observed: np.ndarray, probs: np.ndarray) -> bool:
    """Pearson chi-square below the 0.999 quantile (df <= 6: < 22.5)."""
    from scipy.stats import chi2

    expected = probs * observed.sum()
    stat = float((((observed - expected) ** 2) / expected).sum())
    return stat < chi2.ppf(0.999, len(probs) - 1)


@pytest.mark.parametrize("overrides", [{}, SEED_000])
def test_random_strategy_draws_each_scale_with_its_probability(overrides):
    cfg = ms.MultiScaleConfig(**overrides)
    rng = np.random.default_rng(0)
    n = 20_000
    images = [ms.sample_image_size(cfg, i, n, rng) for i in range(n)]
    videos = [ms.sample_video_shape(cfg, i, n, rng) for i in range(n)]
    for draws, scales, probs in (
        (images, [tuple(s) for s in cfg.image_scales], cfg.image_scale_probs),
        ([v[1:] for v in videos], [tuple(s) for s in cfg.video_scales], cfg.video_scale_probs),
        ([v[0] for v in videos], cfg.video_frame_scales, cfg.video_frame_scale_probs),
    ):
        observed = np.array([sum(d == s for d in draws) for s in scales], dtype=float)
        assert observed.sum() == n  # nothing outside the scales
        assert _chi2_ok(observed, np.array(probs)), (observed / n, probs)
    # a wrong distribution fails the same test (the check can fail)
    wrong = np.array(cfg.image_scale_probs[::-1]) if overrides else np.array([0.3, 0.2, 0.2, 0.2, 0.1])
    observed = np.array([sum(d == tuple(s) for d in images) for s in cfg.image_scales], dtype=float)
    assert not _chi2_ok(observed, wrong)


def test_off_means_base_sizes():
    cfg = ms.MultiScaleConfig(**SEED_000, use_multi_scale=False, multi_scale_strategy="curriculum")
    rng = np.random.default_rng(0)
    assert {ms.sample_image_size(cfg, i, 100, rng) for i in range(100)} == {(256, 256)}
    assert {ms.sample_video_shape(cfg, i, 100, rng) for i in range(100)} == {(16, 256, 256)}


def test_progressive_grows_monotonically_from_min_to_max():
    cfg = ms.MultiScaleConfig(**SEED_000, multi_scale_strategy="progressive")
    rng = np.random.default_rng(0)
    total = 1000
    sizes = [ms.sample_image_size(cfg, s, total, rng)[0] for s in range(total)]
    shapes = [ms.sample_video_shape(cfg, s, total, rng) for s in range(total)]
    for seq in (sizes, [s[0] for s in shapes], [s[1] for s in shapes]):
        assert all(a <= b for a, b in zip(seq, seq[1:]))
    assert sizes[0] == 128 and sizes[-1] == 512 and len(set(sizes)) == 7  # every scale, in order
    assert shapes[0] == (8, 128, 128) and shapes[-1] == (32, 384, 384)
    # min/max take effect: a narrower range of the same scales, e.g. max 256 -> 256 at the end
    narrow = ms.MultiScaleConfig(
        **{**SEED_000, "image_max_size": 384, "image_scales": SEED_000["image_scales"][:5],
           "image_scale_probs": [0.1, 0.2, 0.3, 0.2, 0.2]},
        multi_scale_strategy="progressive",
    )  # fmt: skip
    half = ms.sample_image_size(narrow, 500, 1001, rng)[0]
    assert half == 256  # 128 + 0.5 * (384 - 128) = 256
    assert ms.sample_image_size(narrow, 1000, 1001, rng) == (384, 384)


def test_curriculum_shifts_the_mean_from_small_to_large():
    cfg = ms.MultiScaleConfig(**SEED_000, multi_scale_strategy="curriculum")
    rng = np.random.default_rng(1)
    total = 10_000

    def mean_size(lo, hi):
        return np.mean([ms.sample_image_size(cfg, s, total, rng)[0] for s in range(lo, hi)])

    early, middle, late = mean_size(0, 2000), mean_size(4000, 6000), mean_size(8000, 10_000)
    assert early + 40 < middle < late - 40, (early, middle, late)
    # exactly the configured probabilities at mid-training
    assert np.allclose(
        ms.scale_probs(cfg.image_scales, cfg.image_scale_probs, "curriculum", 0.5), cfg.image_scale_probs
    )
    frames = [ms.sample_video_shape(cfg, s, total, rng)[0] for s in (*range(0, 2000), *range(8000, 10_000))]
    assert np.mean(frames[:2000]) + 2 < np.mean(frames[2000:])


@pytest.mark.parametrize(
    "change, key",
    [
        ({"image_scale_probs": [0.5, 0.5, 0.5, 0.2, 0.1]}, "image_scale_probs must sum to 1"),
        ({"video_scale_probs": [0.5, 0.5]}, "video_scale_probs has 2 values but video_scales has 3"),
        ({"video_frame_scales": [4, 6, 9]}, r"video_frame_scales: 9 lies outside \[video_min_frames"),
        (
            {"image_scales": [[16, 16], [24, 24], [32, 32], [40, 40], [64, 64]]},
            r"image_scales: \[64, 64\] lies outside",
        ),
        ({"image_base_size": 8}, "image_base_size .8. lies outside"),
        ({"video_min_size": 40}, "video_min_size .40. is larger than video_max_size"),
        ({"image_scales": [[16, 16, 3], [24, 24], [32, 32], [40, 40], [48, 48]]}, "not a .height, width. pair"),
        ({"multi_scale_strategy": "zoom"}, "multi_scale_strategy"),
    ],
)
def test_bad_knobs_are_refused_naming_the_key(change, key):
    with pytest.raises(ValidationError, match=key):
        ms.MultiScaleConfig(**change)


def test_resize_helpers():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    out = ms.resize_image(img, (16, 24))
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    flat = np.full((32, 32, 3), 77, np.uint8)  # bilinear keeps a constant image constant
    assert (ms.resize_image(flat, (48, 40)) == 77).all()
    assert ms.resize_image(img, (32, 48)) is img
    frames = np.stack([np.full((8, 8, 3), i, np.uint8) for i in range(9)])  # frame i has value i
    vid = ms.resize_video(frames, (5, 4, 4))
    assert vid.shape == (5, 4, 4, 3) and [int(f[0, 0, 0]) for f in vid] == [0, 2, 4, 6, 8]
    assert [int(f[0, 0, 0]) for f in ms.resize_video(frames[:2], (4, 8, 8))] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="uint8"):
        ms.resize_image(img.astype(np.float32), (8, 8))
