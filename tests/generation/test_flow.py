"""Flow matching / DDPM objectives, the sampler's conventions, CFG and the latent codec."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xoron_pipelines.model.dit import MoEDiT
from xoron_pipelines.training.flow import Codec, build_autoencoder, diffusion_loss, sample, train_autoencoder


class PointMass(nn.Module):
    """The exact velocity field of a data distribution that is one point ``x0``:
    x_s = (1 - s) x0 + s n  =>  v = n - x0 = (x_s - x0) / s."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, timestep, context, mask):
        s = (timestep / 1000).view(-1, *([1] * (x.dim() - 1)))
        return (x - self.x0) / s

    def drop_context(self, context, mask, drop):
        return context, mask


def test_flow_sampler_integrates_the_velocity_to_the_data():
    x0 = torch.rand(1, 3, 8, 8) * 2 - 1
    ctx, mask = torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool)
    out = sample(
        PointMass(x0),
        (2, 3, 8, 8),
        ctx,
        mask,
        steps=5,
        cfg_scale=1.0,
        flow=True,
        generator=torch.Generator().manual_seed(0),
    )
    # Euler on a straight path is exact: noise at s=1 lands on x0 at s=0 in any number of steps
    assert torch.allclose(out, x0.expand(2, -1, -1, -1), atol=1e-4)


class TwoWay(nn.Module):
    """Predicts 1 for a real prompt, 0 for the empty one (row mask has one token)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.batches = []

    def forward(self, x, timestep, context, mask):
        self.batches.append(x.shape[0])
        cond = (context[:, 0, 0] != -7).float().view(-1, *([1] * (x.dim() - 1)))
        return torch.zeros_like(x) + cond

    def drop_context(self, context, mask, drop):
        c = context.clone()
        c[drop] = -7
        return c, mask


def test_cfg_mixes_conditional_and_unconditional_predictions():
    ctx, mask = torch.ones(3, 2, 4), torch.ones(3, 2, dtype=torch.bool)
    outs = {}
    for scale in (1.0, 4.0):
        model = TwoWay()
        x = sample(
            model,
            (3, 1, 4, 4),
            ctx,
            mask,
            steps=4,
            cfg_scale=scale,
            flow=True,
            generator=torch.Generator().manual_seed(0),
        )
        outs[scale] = x
        assert set(model.batches) == ({3} if scale == 1.0 else {6})  # scale 1: no unconditional pass
    # prediction = uncond + s (cond - uncond) = s: the sample moves s times as far over s in [1, 0]
    start = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(outs[1.0], start - 1.0, atol=1e-5)
    assert torch.allclose(outs[4.0], start - 4.0, atol=1e-5)


def test_objectives_and_loss_weight():
    torch.manual_seed(0)
    model = MoEDiT(hidden_size=24, depth=1, num_heads=2, text_dim=8, num_experts=2)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    ctx, mask = torch.randn(4, 3, 8), torch.ones(4, 3, dtype=torch.bool)
    grads = []
    for weight in (1.0, 0.1):
        model.zero_grad()
        loss = weight * diffusion_loss(model, x0, ctx, mask, flow=True, generator=torch.Generator().manual_seed(1))
        loss.backward()
        grads.append((loss.item(), model.final.weight.grad.clone()))
    assert abs(grads[1][0] - 0.1 * grads[0][0]) < 1e-6
    assert torch.allclose(grads[1][1], 0.1 * grads[0][1], atol=1e-7)
    # zero-initialised output: flow target noise - x0, epsilon target the noise (different losses)
    flow = diffusion_loss(model, x0, ctx, mask, flow=True, generator=torch.Generator().manual_seed(1))
    eps = diffusion_loss(model, x0, ctx, mask, flow=False, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    assert abs(flow.item() - (noise - x0).square().mean().item()) < 1e-5
    assert abs(eps.item() - noise.square().mean().item()) < 1e-5
    out = sample(
        model,
        (2, 3, 8, 8),
        ctx[:2],
        mask[:2],
        steps=3,
        cfg_scale=2.0,
        flow=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


def test_latent_codec_follows_the_channel_knob():
    torch.manual_seed(0)
    images = torch.rand(8, 3, 16, 16)
    for channels in (2, 4):
        vae = build_autoencoder(channels, 8)
        mse = train_autoencoder(vae, images * 2 - 1, steps=2, batch_size=4, lr=1e-3, seed=0)
        codec = Codec(vae)
        z = codec.encode(images)
        assert z.shape == (8, channels, 8, 8) and codec.channels() == channels and codec.factor() == 2
        assert codec.decode(z).shape == images.shape and mse >= 0
    assert Codec().encode(images).shape == images.shape
    assert torch.allclose(Codec().decode(Codec().encode(images)), images)


def test_prior_noise_correlates_frames_by_the_knob():
    from xoron_pipelines.training.flow import prior_noise

    shape = (4000, 3, 1, 2, 2)
    plain = prior_noise(shape, torch.Generator().manual_seed(0), 0.0)
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    for rho in (0.0, 0.5, 0.9):
        n = prior_noise(shape, torch.Generator().manual_seed(1), rho)
        assert abs(n.var().item() - 1) < 0.03  # every element stays N(0, 1)
        frames = torch.corrcoef(n[:, :, 0, 0, 0].T)  # (T, T) over the clips
        assert abs(frames[0, 1].item() - rho) < 0.05 and abs(frames[1, 2].item() - rho) < 0.05
        pixels = torch.corrcoef(n[:, 0, 0].reshape(len(n), -1).T)  # within a frame: independent
        assert abs(pixels[0, 1].item()) < 0.05
    with pytest.raises(ValueError, match="video shapes"):
        prior_noise((2, 3, 4, 4), torch.Generator(), 0.5)


def test_sampler_starts_from_the_correlated_prior():
    # a model predicting zero velocity returns its starting noise: the prior the sampler drew
    zero = TwoWay()
    ctx, mask = torch.ones(2000, 1, 4), torch.ones(2000, 1, dtype=torch.bool)
    zero.forward = lambda x, t, c, m: torch.zeros_like(x)
    for rho in (0.0, 0.7):
        out = sample(
            zero,
            (2000, 2, 1, 1, 1),
            ctx,
            mask,
            steps=2,
            cfg_scale=1.0,
            flow=True,
            generator=torch.Generator().manual_seed(0),
            frame_noise_correlation=rho,
        )
        assert abs(torch.corrcoef(out[:, :, 0, 0, 0].T)[0, 1].item() - rho) < 0.06


class FramePointMass(PointMass):
    """PointMass for videos with a timestep per frame; records the timesteps it was given."""

    def __init__(self, x0):
        super().__init__(x0)
        self.seen = []

    def forward(self, x, timestep, context, mask):
        self.seen.append(timestep.clone())
        s = (timestep / 1000).clamp(min=1e-6).view(*timestep.shape, 1, 1, 1)
        return (x - self.x0[:, : x.shape[1]]) / s


def test_frame_by_frame_sampler_denoises_each_frame_after_the_finished_ones():
    x0 = torch.rand(1, 3, 2, 4, 4) * 2 - 1
    model = FramePointMass(x0)
    ctx, mask = torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool)
    out = sample(
        model,
        (2, 3, 2, 4, 4),
        ctx,
        mask,
        steps=4,
        cfg_scale=1.0,
        flow=True,
        generator=torch.Generator().manual_seed(0),
        frame_by_frame=True,
    )
    assert torch.allclose(out, x0.expand(2, -1, -1, -1, -1), atol=1e-4)
    # frame f is denoised with the clip cut after it: finished frames at timestep 0, f at s > 0
    assert [t.shape[1] for t in model.seen] == [1] * 4 + [2] * 4 + [3] * 4
    assert all((t[:, :-1] == 0).all() and (t[:, -1] > 0).all() for t in model.seen)


def test_frame_by_frame_loss_skips_the_clean_history():
    torch.manual_seed(0)
    model = MoEDiT(hidden_size=24, depth=1, num_heads=2, text_dim=8, num_experts=2, video=True)
    x0 = torch.rand(64, 4, 3, 4, 4) * 2 - 1
    ctx, mask = torch.randn(64, 3, 8), torch.ones(64, 3, dtype=torch.bool)
    # zero-initialised model: the loss is the target's energy |noise - x0|^2 on the noised frames
    # only (clean history frames would add |noise - x0|^2 of frames it cannot predict)
    loss = diffusion_loss(
        model, x0, ctx, mask, flow=True, generator=torch.Generator().manual_seed(3), frame_by_frame=True
    )
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(x0.shape, generator=gen)
    torch.sigmoid(torch.randn(64 * 4, generator=gen))  # the levels drawn next
    k = torch.randint(0, 4, (64, 1), generator=gen)
    noised = torch.arange(4)[None] >= k
    expected = (noise - x0).square().mean(dim=(2, 3, 4))[noised].mean()
    assert abs(loss.item() - expected.item()) < 1e-5
    with pytest.raises(ValueError, match="flow-matching"):
        diffusion_loss(model, x0, ctx, mask, flow=False, generator=torch.Generator(), frame_by_frame=True)
