"""The image and video generation stages: media table in, trained :class:`Generator` out.

Each stage is one nested MLflow run (``image_gen`` / ``video_gen``) with its parameters, the
loss per step, a preview logged every ``sample_every`` steps (image grid / frame strips of the
first held-out prompts, fixed seed) and the loss curve. The LLM is frozen: its last hidden
states of every distinct caption are computed once (:func:`~.flow.prompt_states`).

``p`` is the stage's validated parameter object (``generation.image_gen`` / ``video_gen``);
it is read by attribute, so this library does not import the pipeline layer. ``multi_scale``
(``generation.multi_scale``, a :class:`~xoron_pipelines.data.multiscale.MultiScaleConfig`) sets
the shape of every batch, drawn by the multimodal stages' sampler
(:func:`~xoron_pipelines.data.multiscale.sample_image_size` /
:func:`~xoron_pipelines.data.multiscale.sample_video_shape`): the training items are resized once
to every size it can draw; a clip of ``frames`` frames is its first ``frames`` frames (cut, never
stretched: the motion per frame, hence "slowly" / "quickly", stays that of the caption).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xoron_pipelines import tracking
from xoron_pipelines.data.media import MediaError, decode_image, decode_video
from xoron_pipelines.data.multiscale import (
    MultiScaleConfig,
    image_sizes,
    sample_image_size,
    sample_video_shape,
    video_sizes,
)
from xoron_pipelines.model.dit import MoEDiT
from xoron_pipelines.training.flow import (
    Codec,
    Generator,
    TrainData,
    build_autoencoder,
    lr_factor,
    prompt_states,
    train_autoencoder,
    train_generator,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data
def table_items(table, kind: str, split: str, limit: int = 0) -> tuple[list[np.ndarray], list[str], list[str]]:
    """(decoded media, captions, attributes JSON) of the ``split`` rows of a media table. Raises
    ``ValueError`` naming the table when it has no such rows or a row does not decode. ``table``:
    a pandas DataFrame or anything with ``to_pandas()`` (a pyarrow Table)."""
    if hasattr(table, "to_pandas"):
        table = table.to_pandas()
    missing = {"id", "modality", "split", "media", "caption", "attributes"} - set(table.columns)
    if missing:
        raise ValueError(f"media_{kind} lacks the columns {sorted(missing)} (data/media.py MEDIA_COLUMNS)")
    rows = table[(table["modality"] == kind) & (table["split"] == split)]
    if limit:
        rows = rows.iloc[:limit]
    if rows.empty:
        raise ValueError(
            f"media_{kind} has no {kind} rows of split {split!r} (run the synth and data_processing pipelines)"
        )
    items = []
    for rid, data in zip(rows["id"], rows["media"], strict=True):
        try:
            items.append(decode_image(data) if kind == "image" else decode_video(data))
        except MediaError as err:
            raise ValueError(f"media_{kind} row {rid!r} does not decode: {err}") from err
    return items, list(rows["caption"]), list(rows["attributes"])


def to_tensor(items: list[np.ndarray], size: tuple[int, int], frames: int | None = None) -> torch.Tensor:
    """uint8 images (H, W, 3) / videos (T, H, W, 3) -> float (N, [T,] 3, h, w) in [0, 1] at
    ``size`` (area-averaged when smaller, bilinear when larger) and the first ``frames`` frames."""
    out = []
    for item in items:
        x = torch.tensor(np.asarray(item), dtype=torch.float32).div(255)
        if frames is not None:
            if x.shape[0] < frames:
                raise ValueError(f"a clip has {x.shape[0]} frames, the video stage needs {frames}")
            x = x[:frames]
        x = x.movedim(-1, -3)
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        if tuple(flat.shape[-2:]) != tuple(size):
            mode = "area" if flat.shape[-1] >= size[1] else "bilinear"
            flat = F.interpolate(flat, size=tuple(size), mode=mode)
        out.append(flat.reshape(*lead, *flat.shape[1:]))
    return torch.stack(out)


def prompt_table(llm, tokenizer, captions: list[str], max_tokens: int):
    """Distinct captions, their LLM states (context, mask) and each caption's index."""
    distinct = sorted(set(captions))
    where = {c: i for i, c in enumerate(distinct)}
    context, mask = prompt_states(llm, tokenizer, distinct, max_tokens)
    return distinct, context, mask, torch.tensor([where[c] for c in captions])


# --------------------------------------------------------------------------- previews
def preview_figure(items: np.ndarray, prompts: list[str], title: str):
    """Image grid (one row of images) or frame strips (one row per clip)."""
    plt = tracking._pyplot()
    video = items.ndim == 5
    rows = len(items) if video else 1
    cols = items.shape[1] if video else len(items)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.4 * rows), squeeze=False)
    for i, item in enumerate(items):
        for j in range(cols):
            ax = axes[i, j] if video else axes[0, i]
            ax.imshow(item[j] if video else item)
            ax.axis("off")
            if video and j == 0:
                ax.set_title(prompts[i][:40], fontsize=6, loc="left")
            if not video:
                ax.set_title(prompts[i][:24], fontsize=5)
            if not video:
                break
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- stages
def _train(
    name: str,
    kind: str,
    dit: MoEDiT,
    codec: Codec,
    data: TrainData,
    p: Any,
    *,
    flow: bool,
    cfg_scale: float,
    steps_infer: int,
    loss_weight: float,
    seed: int,
    meta: dict,
    preview: tuple[torch.Tensor, torch.Tensor, list[str]],
    extra_params: dict,
) -> tuple[Generator, dict]:
    m = p.model
    generator = Generator(
        dit, codec, {**meta, "kind": kind, "flow": flow, "cfg_scale": cfg_scale, "inference_steps": steps_infer}
    )
    start = time.monotonic()
    with tracking.stage_run(name, tags={"xoron.pipeline": "generation"}) as run:
        recorder = tracking.StageRecorder(enabled=run is not None)
        if run is not None:
            tracking.log_params({"stage": p.model_dump(mode="json"), "loss_weight": loss_weight, **extra_params})

        def on_step(step: int, metrics: dict) -> None:
            recorder.log(step, metrics)
            if run is not None and (step % m.sample_every == 0 or step == m.steps):
                items = generator.generate(preview[0], preview[1], seed=seed)
                tracking.log_figure(
                    preview_figure(items, preview[2], f"{name} step {step}"), f"samples/{name}_step{step:05d}.png"
                )

        losses = train_generator(
            dit,
            data,
            steps=m.steps,
            batch_size=m.batch_size,
            lr=m.lr,
            warmup_steps=m.warmup_steps,
            weight_decay=m.weight_decay,
            grad_clip=m.grad_clip,
            loss_weight=loss_weight,
            cfg_dropout=m.cfg_dropout,
            flow=flow,
            seed=seed,
            t_mean=m.t_mean,
            t_std=m.t_std,
            ema_decay=m.ema_decay,
            lr_schedule=m.lr_schedule,
            frame_noise_correlation=float(meta.get("frame_noise_correlation", 0.0)),
            frame_by_frame=bool(meta.get("frame_by_frame", False)),
            on_step=on_step,
            progress=name,
        )
        if run is not None:
            tracking.log_figure(
                tracking.loss_curve_figure(recorder, f"{name} loss (x {loss_weight})"), f"{name}_loss.png"
            )
    tail = losses[-max(len(losses) // 10, 1) :]
    summary = {
        "stage": name,
        "steps": len(losses),
        "first_loss": losses[0],
        "final_loss": float(np.mean(tail)),
        "loss_weight": loss_weight,
        "final_lr": m.lr * lr_factor(len(losses) - 1, m.steps, m.warmup_steps, m.lr_schedule),
        "train_seconds": round(time.monotonic() - start, 1),
        "parameters": sum(t.numel() for t in dit.parameters()),
        "space": codec.space,
        "items": int(len(data.prompt_index)),
        "distinct_prompts": int(len(data.context)),
    }
    log.info(
        "%s: %d steps, loss %.4f -> %.4f in %.0f s",
        name,
        len(losses),
        losses[0],
        summary["final_loss"],
        summary["train_seconds"],
    )
    return generator, summary


def _denoiser(m: Any, seed: int, **kind: Any) -> MoEDiT:
    """The stage's MoE-DiT, seeded: the ``model`` block's knobs (shared by image and video) plus
    what is the stage's own (``kind``: channels, text width, experts, video layout)."""
    torch.manual_seed(seed)
    return MoEDiT(
        patch_size=m.patch_size,
        hidden_size=m.hidden_size,
        depth=m.depth,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        num_experts_per_tok=m.experts_per_token,
        prediction=m.prediction,
        min_sigma=m.min_sigma,
        **kind,
    )


def _codec(p: Any, images: torch.Tensor, seed: int) -> tuple[Codec, dict]:
    """Pixel space, a local autoencoder directory, or an autoencoder trained on ``images``."""
    if p.generation_latent_space == "pixel":
        return Codec(), {}
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    if p.generation_vae_path:
        vae = AutoencoderKL.from_pretrained(p.generation_vae_path).eval()
        info = {"vae": p.generation_vae_path}
    else:
        vae = build_autoencoder(p.generation_latent_channels, p.generation_base_channels)
        mse = train_autoencoder(vae, images * 2 - 1, p.autoencoder_steps, 32, p.autoencoder_lr, seed)
        info = {"autoencoder_reconstruction_mse": mse}
    codec = Codec(vae)
    z = codec.encode(images[:256])
    codec.shift, codec.scale = float(z.mean()), float(1 / z.std().clamp(min=1e-6))
    return codec, info


def train_image_stage(
    llm,
    tokenizer,
    table,
    p: Any,
    *,
    multi_scale: MultiScaleConfig,
    loss_weight: float,
    seed: int,
    max_prompt_tokens: int,
) -> tuple[Generator, dict]:
    """Train the image generator on the table's train rows, each batch at the size
    :func:`sample_image_size` draws from ``multi_scale`` (the autoencoder, in latent space, trains
    at ``image_base_size``)."""
    items, captions, _ = table_items(table, "image", "train", p.model.train_items)
    distinct, context, mask, index = prompt_table(llm, tokenizer, captions, max_prompt_tokens)
    scales = image_sizes(multi_scale)
    base = (multi_scale.image_base_size, multi_scale.image_base_size)
    pixels = {s: to_tensor(items, s) for s in scales}
    codec, info = _codec(p, pixels[base] if base in pixels else to_tensor(items, base), seed)
    data = TrainData(
        {s: codec.encode(pixels[s]) for s in scales},
        index,
        context,
        mask,
        lambda step, total, rng: sample_image_size(multi_scale, step, total, rng),
    )
    m = p.model
    dit = _denoiser(
        m,
        seed,
        in_channels=codec.channels(),
        text_dim=context.shape[-1],
        num_experts=p.generation_num_experts,
        use_dual_stream=p.generation_use_dual_stream,
    )
    h_items, h_caps, _ = table_items(table, "image", "heldout", m.preview_prompts)
    pc, pm = prompt_states(llm, tokenizer, h_caps, max_prompt_tokens)
    gen, summary = _train(
        "image_gen",
        "image",
        dit,
        codec,
        data,
        p,
        flow=p.generation_use_flow_matching,
        cfg_scale=p.generation_cfg_scale,
        steps_infer=p.generation_inference_steps,
        loss_weight=loss_weight,
        seed=seed,
        meta={"size": list(p.sample_size), "max_prompt_tokens": max_prompt_tokens, "text_dim": int(context.shape[-1])},
        preview=(pc, pm, h_caps),
        extra_params=info,
    )
    return gen, {**summary, **info, "scales": [list(s) for s in scales]}


def _check_clip_lengths(clips: list[np.ndarray], frames: int, key: str, split: str) -> None:
    short = [len(clip) for clip in clips if len(clip) < frames]
    if short:
        raise ValueError(
            f"generation.multi_scale.{key} asks for {frames} frames but {len(short)} of the {len(clips)} {split} "
            f"clips of media_video have fewer (the shortest {min(short)}); clips are cut to their first frames, "
            "never stretched: lower the frame count or render longer clips (synth.media.video.frames)"
        )


def train_video_stage(
    llm,
    tokenizer,
    table,
    p: Any,
    *,
    multi_scale: MultiScaleConfig,
    loss_weight: float,
    seed: int,
    max_prompt_tokens: int,
) -> tuple[Generator, dict]:
    """Train the video generator on the table's train clips, each batch at the (frames, height,
    width) :func:`sample_video_shape` draws from ``multi_scale``: the first ``frames`` frames of
    each clip. Raises ``ValueError`` naming ``multi_scale.video_frame_scales`` (or
    ``video_base_frames``) before any training when a training clip is shorter than a frame count
    drawn, or a held-out clip (the evaluation's real items) shorter than ``video_base_frames``."""
    items, captions, _ = table_items(table, "video", "train", p.model.train_items)
    frame_counts, sizes = video_sizes(multi_scale)
    longest = max(frame_counts)
    _check_clip_lengths(
        items, longest, "video_frame_scales" if multi_scale.use_multi_scale else "video_base_frames", "training"
    )
    _check_clip_lengths(
        table_items(table, "video", "heldout")[0], multi_scale.video_base_frames, "video_base_frames", "held-out"
    )
    distinct, context, mask, index = prompt_table(llm, tokenizer, captions, max_prompt_tokens)
    codec = Codec()
    data = TrainData(
        {s: codec.encode(to_tensor(items, s, longest)) for s in sizes},
        index,
        context,
        mask,
        lambda step, total, rng: sample_video_shape(multi_scale, step, total, rng),
    )
    size, frames = (multi_scale.video_base_size, multi_scale.video_base_size), multi_scale.video_base_frames
    m = p.model
    dit = _denoiser(
        m,
        seed,
        in_channels=3,
        text_dim=context.shape[-1],
        num_experts=p.generation_video_num_experts,
        use_dual_stream=True,
        video=True,
        max_frames=multi_scale.video_max_frames,
        use_3d_rope=p.generation_video_use_3d_rope,
        temporal_moe=p.generation_video_use_temporal_moe,
        causal=p.causal,
    )
    _, h_caps, _ = table_items(table, "video", "heldout", m.preview_prompts)
    pc, pm = prompt_states(llm, tokenizer, h_caps, max_prompt_tokens)
    gen, summary = _train(
        "video_gen",
        "video",
        dit,
        codec,
        data,
        p,
        flow=p.generation_video_use_flow_matching,
        cfg_scale=p.generation_video_cfg_scale,
        steps_infer=p.generation_inference_steps,
        loss_weight=loss_weight,
        seed=seed,
        meta={
            "size": list(size),
            "frames": frames,
            "frame_noise_correlation": p.frame_noise_correlation,
            "frame_by_frame": p.frame_by_frame,
            "max_prompt_tokens": max_prompt_tokens,
            "text_dim": int(context.shape[-1]),
        },
        preview=(pc, pm, h_caps),
        extra_params={},
    )
    return gen, {**summary, "scales": [list(s) for s in sizes], "frame_scales": frame_counts}


# --------------------------------------------------------------------------- generation
def generate_for_prompts(
    generator: Generator,
    llm,
    tokenizer,
    prompts: list[str],
    *,
    seed: int,
    cfg_scale: float | None = None,
    unconditional: bool = False,
) -> np.ndarray:
    """uint8 items for ``prompts`` (the empty prompt for every row when ``unconditional``)."""
    context, mask = prompt_states(llm, tokenizer, prompts, generator.meta["max_prompt_tokens"])
    if unconditional:
        context, mask = generator.dit.drop_context(context, mask, torch.ones(len(prompts), dtype=torch.bool))
    return generator.generate(context, mask, seed=seed, cfg_scale=cfg_scale)


def evaluate_stage(generator: Generator, llm, tokenizer, table, *, num_prompts: int, seed: int, fid_items: int) -> dict:
    """:func:`~xoron_pipelines.evaluation.media_generation.evaluate_generator` on the table's
    held-out rows: ``num_prompts`` prompts drawn with ``seed`` (the training seed is not used),
    two disjoint sets of ``fid_items`` real held-out items for the Fréchet distances."""
    from xoron_pipelines.evaluation.media_generation import evaluate_generator, truth

    kind = generator.kind
    items, captions, attributes = table_items(table, kind, "heldout")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(items))
    if len(items) < 4:
        raise ValueError(f"media_{kind} has {len(items)} held-out rows; the evaluation needs at least 4")
    chosen = pick[: min(num_prompts, len(items))]
    size = tuple(generator.meta["size"])
    frames = generator.meta.get("frames")

    def real(idx) -> np.ndarray:
        x = to_tensor([items[i] for i in idx], size, frames)
        return (x.movedim(-3, -1) * 255).round().to(torch.uint8).numpy()

    half = len(items) // 2
    n_fid = min(fid_items, half)
    prompts = [captions[i] for i in chosen]

    def gen(ps, scale, unconditional):
        return generate_for_prompts(
            generator, llm, tokenizer, ps, seed=seed + 1, cfg_scale=scale, unconditional=unconditional
        )

    report = evaluate_generator(
        kind,
        gen,
        prompts,
        [truth(kind, attributes[i]) for i in chosen],
        real(pick[:n_fid]),
        real(pick[half : half + n_fid]),
        float(generator.meta["cfg_scale"]),
        seed,
    )
    report["seed"] = seed
    return report
