"""Training and sampling of the image / video generators (:class:`~xoron_pipelines.model.dit.MoEDiT`).

Objectives (``flow=True|False``):

* **Rectified flow** (SD3): ``x_s = (1 - s) x0 + s * noise`` with ``s`` logit-normal
  (``sigmoid(N(mean, std))``, more weight mid-way), target the velocity ``noise - x0``; the model
  sees ``timestep = 1000 s``. Sampling: diffusers' ``FlowMatchEulerDiscreteScheduler`` (whose
  Euler step ``x + (s_next - s) v`` integrates exactly this ODE from noise at s = 1 to data at 0).
  The DiT's ``prediction`` (``velocity`` | ``sample``) is internal to it: an x-predicting DiT
  returns its clean estimate as a velocity, so loss and sampler here are the same for both.
* **DDPM / epsilon**: diffusers' ``DDPMScheduler`` (1000 steps, linear betas) adds the noise at a
  uniform timestep, target the noise; sampling runs the same scheduler on ``inference_steps``
  spaced timesteps.

Classifier-free guidance: while training, a row's prompt is replaced by the learned empty
prompt with probability ``cfg_dropout``; sampling mixes ``uncond + scale * (cond - uncond)``
(scale 1 = plain conditional sampling).

Space (:class:`Codec`): ``pixel`` (images in [-1, 1]) or ``latent``: a diffusers
``AutoencoderKL`` (trained here on the training images in seconds, or loaded from a local
directory), latents scaled to unit variance; videos go through it frame by frame.

Conditioning: :func:`prompt_states` runs the frozen LLM on the prompts and returns its last
hidden states and mask (what every generator is conditioned on).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xoron_pipelines.model.dit import MoEDiT

log = logging.getLogger(__name__)

META_FILE = "generator.json"


# --------------------------------------------------------------------------- conditioning
@torch.no_grad()
def prompt_states(llm, tokenizer, prompts: Sequence[str], max_len: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen LLM's last hidden states of each prompt: ((P, L, d_model) float32, mask (P, L)
    bool, True = token), right-padded to the longest prompt (at most ``max_len`` tokens)."""
    ids = [tokenizer.encode(p, add_special_tokens=False)[:max_len] or [0] for p in prompts]
    length = max(len(i) for i in ids)
    batch = torch.zeros(len(ids), length, dtype=torch.long)
    mask = torch.zeros(len(ids), length, dtype=torch.bool)
    for row, seq in enumerate(ids):
        batch[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = True
    device = next(llm.parameters()).device
    was_training = llm.training
    llm.eval()
    out = []
    for start in range(0, len(ids), 64):
        sl = slice(start, start + 64)
        hidden = llm.model(input_ids=batch[sl].to(device), attention_mask=mask[sl].long().to(device)).last_hidden_state
        out.append(hidden.float().cpu())
    llm.train(was_training)
    states = torch.cat(out)
    return states * mask[..., None], mask


# --------------------------------------------------------------------------- space
def build_autoencoder(latent_channels: int, base_channels: int):
    """A tiny diffusers ``AutoencoderKL``: two resolution levels (8x fewer values at 4 latent
    channels: H/2 x W/2 x C for H x W x 3), ``base_channels`` then twice that."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(base_channels, 2 * base_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=min(8, base_channels),
        sample_size=32,
    )


def train_autoencoder(
    vae, images: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int, kl_weight: float = 1e-6
):
    """Fit ``vae`` on ``images`` (N, 3, H, W) in [-1, 1]: L1 + MSE reconstruction of the
    posterior mean plus a small KL term. Returns the final reconstruction MSE on all images."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    vae.train()
    for _ in range(steps):
        x = images[torch.randint(len(images), (min(batch_size, len(images)),), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(x).latent_dist.mean).sample for x in images.split(64)])
    return float(F.mse_loss(rec, images))


@dataclass
class Codec:
    """Pixels <-> the model's space. ``vae`` None: pixel space ([0, 1] -> [-1, 1]); otherwise the
    autoencoder's posterior mean, shifted and scaled (``shift``, ``scale``) to unit variance."""

    vae: Any = None
    scale: float = 1.0
    shift: float = 0.0

    @property
    def space(self) -> str:
        return "pixel" if self.vae is None else "latent"

    def channels(self) -> int:
        return 3 if self.vae is None else int(self.vae.config.latent_channels)

    def factor(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) in [0, 1] -> model space (..., C, H/f, W/f)."""
        x = images * 2 - 1
        if self.vae is None:
            return x
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        z = torch.cat([self.vae.encode(c).latent_dist.mean for c in flat.split(64)])
        z = (z - self.shift) * self.scale
        return z.reshape(*lead, *z.shape[1:])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model space -> images (..., 3, H, W) in [0, 1]."""
        if self.vae is not None:
            lead = z.shape[:-3]
            flat = z.reshape(-1, *z.shape[-3:]) / self.scale + self.shift
            x = torch.cat([self.vae.decode(c).sample for c in flat.split(64)])
            z = x.reshape(*lead, *x.shape[1:])
        return ((z + 1) / 2).clamp(0, 1)


# --------------------------------------------------------------------------- objective
def logit_normal(n: int, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """``sigmoid(N(mean, std))``: SD3's logit-normal timestep density on (0, 1)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def prior_noise(shape: Sequence[int], generator: torch.Generator, frame_correlation: float = 0.0) -> torch.Tensor:
    """Standard normal noise of ``shape``. For videos (B, T, ...) with ``frame_correlation`` rho > 0,
    every frame's noise is ``sqrt(rho) * shared + sqrt(1 - rho) * own`` (one ``shared`` draw per
    clip): each element stays N(0, 1), two frames of a clip correlate by rho (PYoCo's "mixed"
    video noise prior, Ge et al. 2023). rho = 0 draws exactly ``torch.randn(shape)``."""
    own = torch.randn(tuple(shape), generator=generator)
    if frame_correlation <= 0:
        return own
    if len(shape) != 5:
        raise ValueError(f"frame-correlated noise needs video shapes (B, T, C, H, W), got {tuple(shape)}")
    shared = torch.randn((shape[0], 1, *shape[2:]), generator=generator)
    return math.sqrt(frame_correlation) * shared + math.sqrt(1 - frame_correlation) * own


def ddpm_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, prediction_type="epsilon", clip_sample=False)


def diffusion_loss(
    model: MoEDiT,
    x0: torch.Tensor,
    context: torch.Tensor,
    mask: torch.Tensor,
    *,
    flow: bool,
    generator: torch.Generator,
    t_mean: float = 0.0,
    t_std: float = 1.0,
    frame_noise_correlation: float = 0.0,
    frame_by_frame: bool = False,
) -> torch.Tensor:
    """Mean squared error of the model's prediction: velocity ``noise - x0`` at logit-normal
    ``s`` (flow) or the noise at a uniform DDPM timestep (epsilon). ``frame_noise_correlation``:
    the video noise prior of :func:`prior_noise` (flow only: DDPM's sampler adds its own noise).

    ``frame_by_frame`` (video, flow; diffusion forcing, Chen et al. 2024): each clip keeps its
    first k frames clean (k uniform in [0, T)) as the history a frame-by-frame sampler gives,
    every later frame gets its own logit-normal ``s`` (a timestep per frame), and the loss is
    the mean over the noised frames only."""
    b = x0.shape[0]
    if (frame_noise_correlation > 0 or frame_by_frame) and not flow:
        raise ValueError("frame_noise_correlation and frame_by_frame need the flow-matching objective")
    noise = prior_noise(x0.shape, generator, frame_noise_correlation).to(x0)
    shape = (b,) + (1,) * (x0.dim() - 1)
    if frame_by_frame:
        if x0.dim() != 5:
            raise ValueError(f"frame_by_frame needs video samples (B, T, C, H, W), got {tuple(x0.shape)}")
        t = x0.shape[1]
        s = logit_normal(b * t, t_mean, t_std, generator).view(b, t)
        history = torch.arange(t)[None] < torch.randint(0, t, (b, 1), generator=generator)
        s = s.masked_fill(history, 0.0).to(x0)
        s5 = s.view(b, t, 1, 1, 1)
        pred = model((1 - s5) * x0 + s5 * noise, s * 1000, context, mask)
        per_frame = (pred - (noise - x0)).square().mean(dim=(2, 3, 4))
        return per_frame[~history.to(per_frame.device)].mean()
    if flow:
        s = logit_normal(b, t_mean, t_std, generator).to(x0)
        xt = (1 - s.view(shape)) * x0 + s.view(shape) * noise
        pred = model(xt, s * 1000, context, mask)
        return F.mse_loss(pred, noise - x0)
    sched = ddpm_scheduler()
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator)
    xt = sched.add_noise(x0, noise, t)
    return F.mse_loss(model(xt, t.to(x0), context, mask), noise)


@torch.no_grad()
def sample(
    model: MoEDiT,
    shape: Sequence[int],
    context: torch.Tensor,
    mask: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
    flow: bool,
    generator: torch.Generator,
    scheduler=None,
    frame_noise_correlation: float = 0.0,
    frame_by_frame: bool = False,
) -> torch.Tensor:
    """Draw ``shape[0]`` samples for the prompts (context, mask) in ``steps`` scheduler steps with
    classifier-free guidance ``cfg_scale`` (1 = conditional only, no unconditional pass).
    ``scheduler``: a diffusers scheduler to use (default: a fresh flow-matching Euler one, or
    DDPM when not ``flow``). ``frame_noise_correlation``: the starting noise's prior, as trained
    (:func:`prior_noise`). ``frame_by_frame`` (video, flow, a block-causal model trained so):
    frame t is denoised in ``steps`` steps beside the finished frames < t (timestep 0), then
    kept, so each frame continues the clean history."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if frame_by_frame:
        if not flow or len(shape) != 5:
            raise ValueError(f"frame_by_frame sampling needs flow matching and video shapes, got {tuple(shape)}")
        return _sample_frame_by_frame(
            model, shape, context, mask, steps, cfg_scale, generator, frame_noise_correlation, scheduler
        )

    model.eval()
    b = shape[0]
    device = next(model.parameters()).device
    context, mask = context.to(device), mask.to(device)
    if frame_noise_correlation > 0 and not flow:
        raise ValueError("frame_noise_correlation needs the flow-matching objective")
    x = prior_noise(shape, generator, frame_noise_correlation).to(device)
    sched = scheduler or (
        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0) if flow else ddpm_scheduler()
    )
    sched.set_timesteps(steps)
    context, mask = _with_unconditional(model, context, mask, cfg_scale)
    for t in sched.timesteps:
        pred = _guided(model, x, t.expand(b).to(device).float(), context, mask, cfg_scale)
        if flow:
            x = sched.step(pred, t, x).prev_sample
        else:
            x = sched.step(pred, t, x, generator=generator).prev_sample
    return x


def _with_unconditional(model, context, mask, cfg_scale):
    """The prompts' rows followed by as many empty-prompt rows when ``cfg_scale`` != 1."""
    if cfg_scale == 1.0:
        return context, mask
    null_ctx, null_mask = model.drop_context(
        context, mask, torch.ones(len(context), dtype=torch.bool, device=mask.device)
    )
    return torch.cat([context, null_ctx]), torch.cat([mask, null_mask])


def _guided(model, x, timesteps, context, mask, cfg_scale):
    """The model's prediction for ``x`` with classifier-free guidance (``context`` / ``mask``
    hold the conditional rows, then the unconditional ones, when ``cfg_scale`` != 1)."""
    if cfg_scale == 1.0:
        return model(x, timesteps, context, mask)
    cond, uncond = model(torch.cat([x, x]), torch.cat([timesteps, timesteps]), context, mask).chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def _sample_frame_by_frame(model, shape, context, mask, steps, cfg_scale, generator, correlation, scheduler):
    from diffusers import FlowMatchEulerDiscreteScheduler

    model.eval()
    b, frames = shape[0], shape[1]
    device = next(model.parameters()).device
    context, mask = context.to(device), mask.to(device)
    context, mask = _with_unconditional(model, context, mask, cfg_scale)
    x = prior_noise(shape, generator, correlation).to(device)
    for f in range(frames):
        sched = copy.deepcopy(scheduler) if scheduler is not None else None
        sched = sched or FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            timesteps = torch.zeros(b, f + 1, device=device)
            timesteps[:, f] = t
            pred = _guided(model, x[:, : f + 1], timesteps, context, mask, cfg_scale)[:, f]
            x[:, f] = sched.step(pred, t, x[:, f]).prev_sample
    return x


# --------------------------------------------------------------------------- the generator
@dataclass
class Generator:
    """A trained generator: denoiser, codec and what sampling needs (``meta``: kind image|video,
    flow, cfg_scale, inference_steps, size, frames, text_dim, max_prompt_tokens)."""

    dit: MoEDiT
    codec: Codec
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def generate(
        self,
        context: torch.Tensor,
        mask: torch.Tensor,
        *,
        seed: int,
        size: tuple[int, int] | None = None,
        frames: int | None = None,
        cfg_scale: float | None = None,
        steps: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """uint8 images (B, H, W, 3) or videos (B, T, H, W, 3) for the prompt states
        (context, mask), sampled from a generator seeded with ``seed``."""
        h, w = size or tuple(self.meta["size"])
        f = self.codec.factor()
        if h % (f * self.dit.config.patch_size) or w % (f * self.dit.config.patch_size):
            raise ValueError(f"size {h}x{w} is not divisible by {f * self.dit.config.patch_size} (patch x autoencoder)")
        latent = (self.codec.channels(), h // f, w // f)
        if self.kind == "video":
            latent = (frames or self.meta["frames"], *latent)
        gen = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, len(context), batch_size):
            c, m = context[start : start + batch_size], mask[start : start + batch_size]
            z = sample(
                self.dit,
                (len(c), *latent),
                c,
                m,
                steps=steps or self.meta["inference_steps"],
                cfg_scale=self.meta["cfg_scale"] if cfg_scale is None else cfg_scale,
                flow=self.meta["flow"],
                generator=gen,
                frame_noise_correlation=float(self.meta.get("frame_noise_correlation", 0.0)),
                frame_by_frame=bool(self.meta.get("frame_by_frame", False)),
            )
            x = self.codec.decode(z.cpu())
            out.append((x.movedim(-3, -1) * 255).round().to(torch.uint8).numpy())
        return np.concatenate(out)

    # -- storage: dit/ (diffusers save_pretrained), vae/ (when latent), generator.json
    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.dit.save_pretrained(str(path / "dit"))
        if self.codec.vae is not None:
            self.codec.vae.save_pretrained(str(path / "vae"))
        meta = {
            **self.meta,
            "space": self.codec.space,
            "latent_scale": self.codec.scale,
            "latent_shift": self.codec.shift,
        }
        (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> Generator:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        vae = None
        if meta.get("space") == "latent":
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(str(path / "vae")).eval()
        codec = Codec(vae, float(meta.pop("latent_scale", 1.0)), float(meta.pop("latent_shift", 0.0)))
        meta.pop("space", None)
        return cls(MoEDiT.from_pretrained(str(path / "dit")).eval(), codec, meta)


# --------------------------------------------------------------------------- training loop
@dataclass
class TrainData:
    """Training items in model space per training size (height, width), and their prompts:
    ``x0[(h, w)]`` (N, C, h', w') images or (N, T, C, h', w') clips, ``prompt_index`` (N,) into
    ``context`` (P, L, d) / ``mask`` (P, L).

    ``sample_shape(step, total, rng)`` draws the shape of the batch of step ``step`` (0-based) of
    ``total``: ``(h, w)``, or ``(frames, h, w)`` for clips (their first ``frames`` frames), the
    signature of :func:`~xoron_pipelines.data.multiscale.sample_image_size` /
    :func:`~xoron_pipelines.data.multiscale.sample_video_shape`; None: the one size of ``x0``."""

    x0: dict[tuple[int, int], torch.Tensor]
    prompt_index: torch.Tensor
    context: torch.Tensor
    mask: torch.Tensor
    sample_shape: Callable[[int, int, np.random.Generator], tuple[int, ...]] | None = None


def lr_factor(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """The learning-rate multiplier of optimizer step ``step + 1`` (0-based ``step``, LambdaLR's
    count) of ``steps``: linear warm-up over ``warmup_steps``, then 1 (``constant``) or a cosine
    from 1 towards 0 one step after the last (``cosine``)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    if step + 1 <= warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    done = (step + 1 - warmup_steps) / (steps - warmup_steps + 1)  # < 1: the last step still learns
    return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def train_generator(
    dit: MoEDiT,
    data: TrainData,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    grad_clip: float,
    loss_weight: float,
    cfg_dropout: float,
    flow: bool,
    seed: int,
    t_mean: float = 0.0,
    t_std: float = 1.0,
    ema_decay: float = 0.0,
    lr_schedule: str = "constant",
    frame_noise_correlation: float = 0.0,
    frame_by_frame: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress: str | None = None,
) -> list[float]:
    """Train ``dit`` for ``steps`` optimizer steps; each batch takes one training shape (drawn by
    ``data.sample_shape`` with a generator seeded by ``seed``) and ``batch_size`` items of it.
    The stage loss is ``loss_weight * diffusion_loss`` (seed 000's image / video diffusion loss
    weight). The learning rate warms up linearly over ``warmup_steps``, then stays at ``lr``
    (``lr_schedule="constant"``) or follows a cosine towards 0 at the end (``"cosine"``). With
    ``ema_decay`` > 0 the weights end as their exponential moving average. Returns the
    per-step (weighted) losses; ``on_step(step, metrics)`` after each step; ``progress``: the label
    of a tqdm progress bar (None: no bar)."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    sizes = list(data.x0)
    opt = torch.optim.AdamW(dit.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup_steps, lr_schedule))
    ema = {k: v.detach().clone() for k, v in dit.state_dict().items()} if ema_decay > 0 else None
    device = next(dit.parameters()).device
    losses = []
    bar = tqdm(range(1, steps + 1), desc=progress, disable=progress is None, leave=False)
    for step in bar:
        dit.train()
        shape = data.sample_shape(step - 1, steps, rng) if data.sample_shape is not None else sizes[0]
        pool = data.x0[tuple(shape[-2:])]
        idx = torch.randint(len(pool), (batch_size,), generator=gen)
        x0 = (pool[idx] if len(shape) == 2 else pool[idx, : shape[0]]).to(device)
        ctx, m = data.context[data.prompt_index[idx]].to(device), data.mask[data.prompt_index[idx]].to(device)
        if cfg_dropout > 0:
            ctx, m = dit.drop_context(ctx, m, (torch.rand(batch_size, generator=gen) < cfg_dropout).to(device))
        loss = loss_weight * diffusion_loss(
            dit,
            x0,
            ctx,
            m,
            flow=flow,
            generator=gen,
            t_mean=t_mean,
            t_std=t_std,
            frame_noise_correlation=frame_noise_correlation,
            frame_by_frame=frame_by_frame,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(dit.parameters(), grad_clip) if grad_clip > 0 else torch.tensor(0.0)
        step_lr = sched.get_last_lr()[0]  # the rate of this step
        opt.step()
        sched.step()
        dit.update_moe_bias()
        if ema is not None:
            with torch.no_grad():
                for k, v in dit.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k].lerp_(v, 1 - ema_decay)
                    else:
                        ema[k].copy_(v)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"generator loss is {value} at step {step} (lower the learning rate)")
        losses.append(value)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{value:.4f}")
        if on_step is not None:
            on_step(step, {"loss": value, "grad_norm": float(norm), "lr": step_lr, "size": shape[-2]})
    if ema is not None:
        dit.load_state_dict(ema)
    dit.eval()
    return losses
