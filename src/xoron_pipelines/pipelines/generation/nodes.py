"""Nodes of the ``generation`` pipeline: typed parameters in, a library call, catalog values out.

``params`` is the ``generation`` group as :class:`~xoron_pipelines.hooks.ParameterValidationHook`
validated it when the run started (a :class:`Params`); ``Params.model_validate`` on it returns it
as is (tests/generation/test_generation_pipeline.py counts one validation per run), so a node
validates only what a direct caller hands it as a plain dict."""

from __future__ import annotations

from typing import Any

import numpy as np

from xoron_pipelines.training.generation_stage import (
    evaluate_stage,
    generate_for_prompts,
    train_image_stage,
    train_video_stage,
)

from .params import Params


def train_image_generator(llm_model, tokenizer, media_image, params: Params | dict) -> tuple[Any, dict]:
    """MoE-DiT image generator trained on ``media_image``'s train rows (MLflow run ``image_gen``)."""
    p = Params.model_validate(params)
    return train_image_stage(
        llm_model,
        tokenizer,
        media_image,
        p.image_gen,
        multi_scale=p.multi_scale,
        loss_weight=p.image_diffusion_loss_weight,
        seed=p.seed,
        max_prompt_tokens=p.max_prompt_tokens,
    )


def train_video_generator(llm_model, tokenizer, media_video, params: Params | dict) -> tuple[Any, dict]:
    """Causal 3D MoE-DiT video generator trained on ``media_video``'s train clips (run ``video_gen``)."""
    p = Params.model_validate(params)
    return train_video_stage(
        llm_model,
        tokenizer,
        media_video,
        p.video_gen,
        multi_scale=p.multi_scale,
        loss_weight=p.video_diffusion_loss_weight,
        seed=p.seed,
        max_prompt_tokens=p.max_prompt_tokens,
    )


def evaluate_generator(generator, llm_model, tokenizer, media, params: Params | dict) -> dict:
    """Adherence (exact analysers) vs shuffled-prompt / unconditional baselines, CFG effect and
    Fréchet distance on held-out prompts (``generation.evaluation``)."""
    e = Params.model_validate(params).evaluation
    return evaluate_stage(
        generator, llm_model, tokenizer, media, num_prompts=e.num_prompts, seed=e.seed, fid_items=e.fid_items
    )


def generate_media(
    image_generator, video_generator, llm_model, tokenizer, params: Params | dict
) -> dict[str, np.ndarray]:
    """One PNG per prompt of ``generation.generate``: ``image_NNN`` images, ``video_NNN`` frame
    strips (the frames side by side)."""
    g = Params.model_validate(params).generate
    out: dict[str, np.ndarray] = {}
    if g.image_prompts:
        images = generate_for_prompts(image_generator, llm_model, tokenizer, g.image_prompts, seed=g.seed)
        out.update({f"image_{i:03d}": img for i, img in enumerate(images)})
    if g.video_prompts:
        clips = generate_for_prompts(video_generator, llm_model, tokenizer, g.video_prompts, seed=g.seed)
        out.update({f"video_{i:03d}": np.concatenate(list(clip), axis=1) for i, clip in enumerate(clips)})
    return out


def export_generators(image_generator, video_generator, llm_model, tokenizer):
    """Both generators as safetensors + config and the image generator as a diffusers pipeline
    directory, staged and published as one directory (``generation_export``)."""
    from xoron_pipelines.atomic import fresh_dir
    from xoron_pipelines.datasets.export import ExportedArtifact
    from xoron_pipelines.datasets.generation import staging_root
    from xoron_pipelines.export.generation import export_generators as export

    staged = fresh_dir(staging_root(), "xoron-generation-export-")
    export(image_generator, video_generator, llm_model, tokenizer, staged)
    return ExportedArtifact(staged)
