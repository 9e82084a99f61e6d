"""The stage knobs of parameters_generation.yml take effect (tiny models, a few steps)."""

from __future__ import annotations

import math

import pytest
from gen_helpers import TINY_STAGE, llm, media_table, tokenizer

from xoron_pipelines.pipelines.generation.params import Params
from xoron_pipelines.training.flow import lr_factor, prompt_states
from xoron_pipelines.training.generation_stage import train_image_stage, train_video_stage


@pytest.fixture(scope="module")
def tables():
    return media_table("image", 16, 4, (16, 16)), media_table("video", 8, 4, (16, 16), frames=4)


def _params(**image):
    return Params.model_validate(
        {
            "image_gen": {
                "image_scales": [[16, 16]],
                "sample_size": [16, 16],
                "generation_inference_steps": 2,
                "model": {**TINY_STAGE, "steps": 2},
                **image,
            },
            "video_gen": {
                "frames": 4,
                "size": [16, 16],
                "generation_inference_steps": 2,
                "model": {**TINY_STAGE, "steps": 2},
            },
        }
    )


def test_diffusion_loss_weights_scale_the_stage_losses(tables):
    image, video = tables
    p = _params()
    first = {}
    for weight in (1.0, 0.1):
        _, s = train_image_stage(
            llm(), tokenizer(), image, p.image_gen, loss_weight=weight, seed=0, max_prompt_tokens=16
        )
        _, v = train_video_stage(
            llm(), tokenizer(), video, p.video_gen, loss_weight=weight, seed=0, max_prompt_tokens=16
        )
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
        image_scales=[[16, 16], [8, 8]],
        sample_size=[24, 24],
    )
    gen, summary = train_image_stage(
        llm(), tokenizer(), image, p.image_gen, loss_weight=1.0, seed=0, max_prompt_tokens=16
    )
    cfg = gen.dit.config
    assert cfg.in_channels == 2 and not cfg.use_dual_stream and cfg.num_experts == 3
    assert summary["space"] == "latent" and summary["scales"] == [[16, 16], [8, 8]]
    assert gen.meta["flow"] is False and gen.codec.factor() == 2
    ctx_items = gen.generate(*prompt_states(llm(), tokenizer(), ["one red circle on the left"]), seed=0)
    assert ctx_items.shape == (1, 24, 24, 3)  # sample_size, not a training size


def test_bad_sizes_are_refused_before_training():
    with pytest.raises(ValueError, match="image_scales 18x16 is not divisible by 4"):
        _params(image_scales=[[18, 16]])
    with pytest.raises(ValueError, match="not divisible by 8"):
        _params(generation_latent_space="latent", sample_size=[20, 20])


def test_a_table_without_rows_is_named(tables):
    image, _ = tables
    with pytest.raises(ValueError, match="media_image has no image rows of split 'train'"):
        train_image_stage(
            llm(),
            tokenizer(),
            image[image["split"] == "heldout"],
            _params().image_gen,
            loss_weight=1.0,
            seed=0,
            max_prompt_tokens=16,
        )


def test_lr_schedule_knob_decays_the_rate_to_the_end(tables):
    image, _ = tables
    steps, lr, warmup = 6, 0.01, 2
    final = {}
    for schedule in ("constant", "cosine"):
        p = _params(model={**TINY_STAGE, "steps": steps, "lr": lr, "warmup_steps": warmup, "lr_schedule": schedule})
        _, s = train_image_stage(llm(), tokenizer(), image, p.image_gen, loss_weight=1.0, seed=0, max_prompt_tokens=16)
        final[schedule] = s["final_lr"]
    # the last of 6 steps: constant keeps lr; cosine is at step 4 of 5 after the warm-up
    assert final["constant"] == pytest.approx(lr)
    assert final["cosine"] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 4 / 5)))
    rates = [lr_factor(s, steps, warmup, "cosine") for s in range(steps)]
    assert rates[:2] == [0.5, 1.0] and all(a > b > 0 for a, b in zip(rates[1:], rates[2:], strict=False))
    with pytest.raises(ValueError, match="lr_schedule"):
        _params(model={**TINY_STAGE, "lr_schedule": "linear"})
