"""The stage knobs of parameters_generation.yml take effect (tiny models, a few steps)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from gen_helpers import TINY_STAGE, llm, media_table, tokenizer

from xoron_pipelines.data.multiscale import sample_image_size, sample_video_shape
from xoron_pipelines.pipelines.generation.params import Params
from xoron_pipelines.training import flow
from xoron_pipelines.training.flow import lr_factor, prompt_states
from xoron_pipelines.training.generation_stage import to_tensor, train_image_stage, train_video_stage
from xoron_pipelines.validation import ParameterError, validate_group

#: tiny tables: 16x16 images, 4-frame clips of 16x16; the stage tests train at these base sizes
BASE = {"image_base_size": 16, "video_base_size": 16, "video_base_frames": 4, "video_min_frames": 2}
#: two image sizes, two frame sizes and two frame counts, all within the tiny tables
TWO_SCALES = {
    **BASE,
    "use_multi_scale": True,
    "image_scales": [[8, 8], [16, 16]],
    "image_scale_probs": [0.5, 0.5],
    "image_min_size": 8,
    "image_max_size": 16,
    "video_scales": [[8, 8], [16, 16]],
    "video_scale_probs": [0.5, 0.5],
    "video_min_size": 8,
    "video_max_size": 16,
    "video_frame_scales": [2, 4],
    "video_frame_scale_probs": [0.5, 0.5],
    "video_max_frames": 4,
}


@pytest.fixture(scope="module")
def tables():
    return media_table("image", 16, 4, (16, 16)), media_table("video", 8, 4, (16, 16), frames=4)


def _params(multi_scale: dict | None = None, steps: int = 2, **image):
    return Params.model_validate(
        {
            "multi_scale": {**BASE, **(multi_scale or {})},
            "image_gen": {
                "sample_size": [16, 16],
                "generation_inference_steps": 2,
                "model": {**TINY_STAGE, "steps": steps},
                **image,
            },
            "video_gen": {"generation_inference_steps": 2, "model": {**TINY_STAGE, "steps": steps}},
        }
    )


def _run(loss_weight: float = 1.0, seed: int = 0) -> dict:
    return {"loss_weight": loss_weight, "seed": seed, "max_prompt_tokens": 16}


def test_diffusion_loss_weights_scale_the_stage_losses(tables):
    image, video = tables
    p = _params()
    first = {}
    for weight in (1.0, 0.1):
        _, s = train_image_stage(llm(), tokenizer(), image, p.image_gen, multi_scale=p.multi_scale, **_run(weight))
        _, v = train_video_stage(llm(), tokenizer(), video, p.video_gen, multi_scale=p.multi_scale, **_run(weight))
        first[weight] = (s["first_loss"], v["first_loss"])
    # the same seed draws the same first batch, noise and timesteps: the weight is the only change
    assert first[0.1][0] == pytest.approx(0.1 * first[1.0][0], rel=1e-5)
    assert first[0.1][1] == pytest.approx(0.1 * first[1.0][1], rel=1e-5)


def test_architecture_space_and_objective_knobs(tables):
    image, _ = tables
    p = _params(
        generation_latent_space="latent",
        generation_latent_channels=2,
        generation_base_channels=8,
        autoencoder_steps=2,
        generation_use_dual_stream=False,
        generation_use_flow_matching=False,
        generation_num_experts=3,
        sample_size=[24, 24],
        multi_scale={**TWO_SCALES, "image_scales": [[16, 16], [8, 8]]},
    )
    gen, summary = train_image_stage(llm(), tokenizer(), image, p.image_gen, multi_scale=p.multi_scale, **_run())
    cfg = gen.dit.config
    assert cfg.in_channels == 2 and not cfg.use_dual_stream and cfg.num_experts == 3
    assert summary["space"] == "latent" and summary["scales"] == [[16, 16], [8, 8]]
    assert gen.meta["flow"] is False and gen.codec.factor() == 2
    ctx_items = gen.generate(*prompt_states(llm(), tokenizer(), ["one red circle on the left"]), seed=0)
    assert ctx_items.shape == (1, 24, 24, 3)  # sample_size, not a training size


def test_bad_sizes_are_refused_before_training():
    with pytest.raises(ValueError, match=r"multi_scale.image_scales 18x16 is not divisible by 4 \(image_gen.model"):
        _params({**TWO_SCALES, "image_scales": [[8, 8], [18, 16]], "image_max_size": 18})
    with pytest.raises(ValueError, match="sample_size 20x20 is not divisible by 8"):
        _params(generation_latent_space="latent", sample_size=[20, 20])
    # the scales are checked only when trained on; with multi-scale off, the base size is
    _params({**TWO_SCALES, "use_multi_scale": False, "video_scales": [[8, 8], [10, 10]]})
    with pytest.raises(ValueError, match=r"multi_scale.video_base_size 18x18 is not divisible by 4 \(video_gen"):
        _params({"video_base_size": 18})
    # through the run's validation: the group, the key and the conf file are named
    with pytest.raises(ParameterError, match=r"parameters_generation.yml:\n  - generation: multi_scale.image_scales"):
        validate_group("generation", {"multi_scale": {**TWO_SCALES, "image_scales": [[8, 8], [14, 14]]}})
    with pytest.raises(ParameterError, match=r"generation.multi_scale: video_frame_scales: 40 lies outside"):
        validate_group("generation", {"multi_scale": {**TWO_SCALES, "video_frame_scales": [2, 40]}})


def _spy_batches(monkeypatch) -> list[torch.Tensor]:
    """Records every training batch (x0 as the denoiser's loss sees it)."""
    seen, loss = [], flow.diffusion_loss

    def spy(dit, x0, *args, **kwargs):
        seen.append(x0.detach().clone())
        return loss(dit, x0, *args, **kwargs)

    monkeypatch.setattr(flow, "diffusion_loss", spy)
    return seen


@pytest.mark.parametrize("strategy", ["random", "progressive", "curriculum"])
def test_image_batches_take_the_shapes_multiscale_draws(tables, monkeypatch, strategy):
    image, _ = tables
    steps, seed = 12, 3
    p = _params({**TWO_SCALES, "multi_scale_strategy": strategy}, steps=steps)
    seen = _spy_batches(monkeypatch)
    _, summary = train_image_stage(llm(), tokenizer(), image, p.image_gen, multi_scale=p.multi_scale, **_run(seed=seed))
    rng = np.random.default_rng(seed)  # the stage's sampler: multiscale's, seeded by the stage seed
    expected = [sample_image_size(p.multi_scale, i, steps, rng) for i in range(steps)]
    assert [tuple(x.shape[-2:]) for x in seen] == expected
    assert {s for s in expected} == {(8, 8), (16, 16)} and summary["scales"] == [[8, 8], [16, 16]]
    if strategy == "progressive":  # small first, then large, never back
        assert expected == sorted(expected) and expected[0] == (8, 8) and expected[-1] == (16, 16)
    # multi-scale off: every batch at image_base_size
    seen.clear()
    off = _params({**TWO_SCALES, "use_multi_scale": False, "multi_scale_strategy": strategy}, steps=4)
    train_image_stage(llm(), tokenizer(), image, off.image_gen, multi_scale=off.multi_scale, **_run(seed=seed))
    assert [tuple(x.shape[-2:]) for x in seen] == [(16, 16)] * 4


def test_video_batches_take_the_frame_counts_and_sizes_multiscale_draws(tables, monkeypatch):
    _, video = tables
    steps, seed = 12, 5
    p = _params(TWO_SCALES, steps=steps)
    seen = _spy_batches(monkeypatch)
    gen, summary = train_video_stage(
        llm(), tokenizer(), video, p.video_gen, multi_scale=p.multi_scale, **_run(seed=seed)
    )
    rng = np.random.default_rng(seed)
    expected = [sample_video_shape(p.multi_scale, i, steps, rng) for i in range(steps)]
    assert [(x.shape[1], *x.shape[-2:]) for x in seen] == expected
    assert {e[0] for e in expected} == {2, 4} and {e[1] for e in expected} == {8, 16}
    assert summary["frame_scales"] == [2, 4] and summary["scales"] == [[8, 8], [16, 16]]
    # a clip of N frames is its first N frames (cut, not resampled): every 2-frame item is the
    # start of a training clip at that size
    from xoron_pipelines.training.generation_stage import table_items

    items = table_items(video, "video", "train")[0]
    short = next(x for x in seen if x.shape[1] == 2)
    full = flow.Codec().encode(to_tensor(items, tuple(short.shape[-2:]), 4))
    assert all(any(torch.equal(item, clip[:2]) for clip in full) for item in short)
    # generated clips: the base frames and size; the model accepts up to video_max_frames
    assert gen.meta["frames"] == 4 and gen.meta["size"] == [16, 16] and gen.dit.config.max_frames == 4


def test_a_frame_scale_longer_than_the_clips_is_named(tables):
    _, video = tables  # 4-frame clips
    p = _params({**TWO_SCALES, "video_frame_scales": [2, 6], "video_max_frames": 6})
    with pytest.raises(ValueError, match="multi_scale.video_frame_scales asks for 6 frames but 8 of the 8 training"):
        train_video_stage(llm(), tokenizer(), video, p.video_gen, multi_scale=p.multi_scale, **_run())
    p = _params({"video_base_frames": 6})
    with pytest.raises(ValueError, match="generation.multi_scale.video_base_frames asks for 6 frames"):
        train_video_stage(llm(), tokenizer(), video, p.video_gen, multi_scale=p.multi_scale, **_run())
    # the held-out clips (the evaluation's real items, at video_base_frames) are checked too
    longer = media_table("video", 8, 4, (16, 16), frames=6)
    mixed = pd.concat([longer[longer["split"] == "train"], video[video["split"] == "heldout"]])
    with pytest.raises(ValueError, match="video_base_frames asks for 6 frames but 4 of the 4 held-out clips"):
        train_video_stage(llm(), tokenizer(), mixed, p.video_gen, multi_scale=p.multi_scale, **_run())


def test_a_table_without_rows_is_named(tables):
    image, _ = tables
    with pytest.raises(ValueError, match="media_image has no image rows of split 'train'"):
        train_image_stage(
            llm(),
            tokenizer(),
            image[image["split"] == "heldout"],
            _params().image_gen,
            multi_scale=_params().multi_scale,
            **_run(),
        )


def test_lr_schedule_knob_decays_the_rate_to_the_end(tables):
    image, _ = tables
    steps, lr, warmup = 6, 0.01, 2
    final = {}
    for schedule in ("constant", "cosine"):
        p = _params(model={**TINY_STAGE, "steps": steps, "lr": lr, "warmup_steps": warmup, "lr_schedule": schedule})
        _, s = train_image_stage(llm(), tokenizer(), image, p.image_gen, multi_scale=p.multi_scale, **_run())
        final[schedule] = s["final_lr"]
    # the last of 6 steps: constant keeps lr; cosine is at step 4 of 5 after the warm-up
    assert final["constant"] == pytest.approx(lr)
    assert final["cosine"] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 4 / 5)))
    rates = [lr_factor(s, steps, warmup, "cosine") for s in range(steps)]
    assert rates[:2] == [0.5, 1.0] and all(a > b > 0 for a, b in zip(rates[1:], rates[2:], strict=False))
    with pytest.raises(ValueError, match="lr_schedule"):
        _params(model={**TINY_STAGE, "lr_schedule": "linear"})


def test_frame_noise_correlation_knob_reaches_training_and_sampling(tables):
    _, video = tables
    corr = {}
    for rho in (0.0, 0.9):
        p = _params()
        p = Params.model_validate(
            {**p.model_dump(), "video_gen": {**p.video_gen.model_dump(), "frame_noise_correlation": rho}}
        )
        gen, s = train_video_stage(llm(), tokenizer(), video, p.video_gen, multi_scale=p.multi_scale, **_run())
        assert gen.meta["frame_noise_correlation"] == rho
        corr[rho] = s["first_loss"]
        # two steps leave the velocity near zero: a sample is close to its starting noise, whose
        # frames correlate by the knob's rho
        clips = gen.generate(*prompt_states(llm(), tokenizer(), ["a red circle moves left slowly"] * 8), seed=0)
        x = clips.astype(np.float32).reshape(8, clips.shape[1], -1)
        c = np.mean([np.corrcoef(x[i, 0], x[i, 1])[0, 1] for i in range(8)])
        assert (c > 0.7) if rho else (abs(c) < 0.2), (rho, c)
    assert corr[0.0] != corr[0.9]  # the training noise follows the knob too
    with pytest.raises(ValueError, match="frame_noise_correlation needs generation_video_use_flow_matching"):
        Params.model_validate(
            {"video_gen": {"frame_noise_correlation": 0.5, "generation_video_use_flow_matching": False}}
        )


def test_frame_by_frame_knob_reaches_training_and_sampling(tables):
    _, video = tables
    out = {}
    for fbf in (False, True):
        p = _params()
        p = Params.model_validate({**p.model_dump(), "video_gen": {**p.video_gen.model_dump(), "frame_by_frame": fbf}})
        gen, s = train_video_stage(llm(), tokenizer(), video, p.video_gen, multi_scale=p.multi_scale, **_run())
        assert gen.meta["frame_by_frame"] is fbf
        states = prompt_states(llm(), tokenizer(), ["a red circle moves left slowly"])
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # two steps barely move the zero-initialised output: perturb it
            for w in gen.dit.parameters():
                w.add_(0.1 * torch.randn(w.shape, generator=g))
        joint = dict(gen.meta, frame_by_frame=False)
        by_frame = dict(gen.meta, frame_by_frame=True)
        gen.meta = joint
        a = gen.generate(*states, seed=0)
        gen.meta = by_frame
        b = gen.generate(*states, seed=0)
        # frame 0 sees only itself either way (block-causal); frame 1 sees a finished frame 0
        # frame by frame, a still noisy one in joint sampling
        assert (a[:, 0] == b[:, 0]).all() and (a[:, 1] != b[:, 1]).any()
        out[fbf] = s["first_loss"]
    assert out[False] != out[True]  # the training objective follows the knob
    with pytest.raises(ValueError, match="frame_by_frame needs causal: true"):
        Params.model_validate({"video_gen": {"frame_by_frame": True, "causal": False}})


def test_prediction_knob_reaches_both_denoisers(tables):
    image, video = tables
    out = {}
    for pred in ("velocity", "sample"):
        q = _params(model={**TINY_STAGE, "steps": 2, "prediction": pred})
        gen, s = train_image_stage(llm(), tokenizer(), image, q.image_gen, multi_scale=q.multi_scale, **_run())
        assert gen.dit.config.prediction == pred
        out[pred] = s["first_loss"]
    # the same batch, noise and timesteps: a zero-initialised x-predictor's velocity is x_s / s, not 0
    assert out["sample"] != pytest.approx(out["velocity"], rel=1e-3)
    p = _params()
    p = Params.model_validate(
        {
            **p.model_dump(),
            "video_gen": {
                **p.video_gen.model_dump(),
                "model": {**TINY_STAGE, "steps": 2, "prediction": "sample", "min_sigma": 0.2},
            },
        }
    )
    vgen, _ = train_video_stage(llm(), tokenizer(), video, p.video_gen, multi_scale=p.multi_scale, **_run())
    assert vgen.dit.config.prediction == "sample" and vgen.dit.config.min_sigma == 0.2
    with pytest.raises(ValueError, match="prediction: sample needs generation_use_flow_matching"):
        _params(generation_use_flow_matching=False, model={**TINY_STAGE, "prediction": "sample"})
    with pytest.raises(ValueError, match="prediction: sample needs generation_video_use_flow_matching"):
        Params.model_validate(
            {"video_gen": {"generation_video_use_flow_matching": False, "model": {"prediction": "sample"}}}
        )


def test_generator_training_shows_a_progress_bar(tables, capfd):
    image, video = tables
    p = _params(steps=3)
    train_image_stage(llm(), tokenizer(), image, p.image_gen, multi_scale=p.multi_scale, **_run())
    train_video_stage(llm(), tokenizer(), video, p.video_gen, multi_scale=p.multi_scale, **_run())
    err = capfd.readouterr().err
    assert "image_gen:" in err and "video_gen:" in err and "/3 [" in err  # label, steps done / 3
