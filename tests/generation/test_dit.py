"""MoE-DiT: shapes, knobs that change the architecture, block-causal time, per-frame routing,
and the safetensors round trip."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines.model.dit import MoEDiT

KW = dict(hidden_size=24, depth=2, num_heads=2, text_dim=8, num_experts=3, num_experts_per_tok=2)


def _perturb(model: MoEDiT, seed: int = 0) -> MoEDiT:
    """Non-zero adaLN / output layers (zero-initialised, so an untouched model outputs zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _ctx(b=2, n=5):
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[-1, 3:] = False
    return torch.randn(b, n, 8), mask


def test_zero_init_outputs_zero_and_shapes():
    model = MoEDiT(**KW).eval()
    ctx, mask = _ctx()
    x = torch.randn(2, 3, 16, 24)
    out = model(x, torch.tensor([1.0, 900.0]), ctx, mask)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # adaLN-Zero: every block starts as identity
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        model(torch.randn(1, 3, 18, 16), torch.tensor([1.0]), ctx[:1], mask[:1])
    with pytest.raises(ValueError, match="image"):
        model(torch.randn(1, 2, 3, 16, 16), torch.tensor([1.0]), ctx[:1], mask[:1])


@pytest.mark.parametrize("dual", [True, False])
def test_text_conditions_the_output_and_padding_is_ignored(dual):
    model = _perturb(MoEDiT(use_dual_stream=dual, **KW))
    ctx, mask = _ctx()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([500.0, 500.0])
    base = model(x, t, ctx, mask)
    other = ctx.clone()
    other[:, 0] += 1.0
    assert not torch.allclose(model(x, t, other, mask), base)  # the prompt matters
    padded = ctx.clone()
    padded[-1, 3:] = 123.0  # masked-out text positions change nothing
    assert torch.allclose(model(x, t, padded, mask)[-1], base[-1], atol=1e-5)
    names = {n.split(".")[2] for n, _ in model.named_parameters() if n.startswith("blocks.0.")}
    assert ("c_attn" in names) == dual and ("cross_q" in names) == (not dual)


@pytest.mark.parametrize("causal", [True, False])
def test_video_attention_is_block_causal_in_time(causal):
    model = _perturb(MoEDiT(video=True, causal=causal, **KW))
    ctx, mask = _ctx()
    x = torch.randn(2, 6, 3, 8, 8)
    t = torch.tensor([400.0, 400.0])
    base = model(x, t, ctx, mask)
    later = x.clone()
    later[:, 4:] += 1.0  # change frames 4 and 5
    out = model(later, t, ctx, mask)
    early_same = torch.allclose(out[:, :4], base[:, :4], atol=1e-5)
    assert early_same == causal
    assert not torch.allclose(out[:, 4:], base[:, 4:])


def test_temporal_moe_routes_per_frame_and_3d_rope_knob():
    frames, per_frame = 4, 4
    seen = []
    for temporal in (True, False):
        model = _perturb(MoEDiT(video=True, temporal_moe=temporal, **KW))
        experts = model.blocks[0].x_mlp.moe.experts
        hook = experts.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))
        model(torch.randn(1, frames, 3, 8, 8), torch.tensor([300.0]), *_ctx(1))
        hook.remove()
        idx = seen[-1].view(frames, per_frame, -1).sort(-1).values
        same_within_frame = bool((idx == idx[:, :1]).all())
        assert same_within_frame == temporal
    assert len(MoEDiT(video=True, use_3d_rope=True, **KW).rope_freqs) == 3
    flat = MoEDiT(video=True, use_3d_rope=False, **KW)
    assert len(flat.rope_freqs) == 2 and flat.frame_embed is not None


def test_moe_knob_sets_experts():
    model = MoEDiT(**{**KW, "num_experts": 5})
    assert all(m.num_experts == 5 for m in model.moe_layers())


def test_save_and_load_round_trip(tmp_path):
    model = _perturb(MoEDiT(video=True, use_3d_rope=False, **KW))
    model.update_moe_bias()
    model.save_pretrained(str(tmp_path))
    assert (tmp_path / "config.json").is_file() and list(tmp_path.glob("*.safetensors"))
    loaded = MoEDiT.from_pretrained(str(tmp_path)).eval()
    ctx, mask = _ctx()
    x, t = torch.randn(2, 3, 3, 8, 8), torch.tensor([10.0, 700.0])
    assert torch.equal(model(x, t, ctx, mask), loaded(x, t, ctx, mask))


def test_per_frame_timesteps_modulate_their_own_frame():
    model = _perturb(MoEDiT(video=True, causal=True, **KW))
    ctx, mask = _ctx()
    x = torch.randn(2, 4, 3, 8, 8)
    one = model(x, torch.tensor([300.0, 300.0]), ctx, mask)
    same = torch.full((2, 4), 300.0)
    assert torch.allclose(model(x, same, ctx, mask), one, atol=1e-5)  # equal levels = one per clip
    later = same.clone()
    later[:, 2] = 0.0  # frame 2 clean: frames 0-1 cannot see it (causal), frame 2 changes
    out = model(x, later, ctx, mask)
    assert torch.allclose(out[:, :2], one[:, :2], atol=1e-5)
    assert not torch.allclose(out[:, 2], one[:, 2], atol=1e-3)
    with pytest.raises(ValueError, match="per-frame timesteps must be"):
        model(x, torch.zeros(2, 3), ctx, mask)


@pytest.mark.parametrize("video", [False, True])
def test_sample_prediction_returns_the_velocity_of_its_clean_estimate(video):
    """prediction="sample": the network's output is x0_hat, returned as (x_s - x0_hat) / max(s, min_sigma)
    with s = timestep / 1000 (one per clip or one per frame); velocity returns the output itself."""
    vel = _perturb(MoEDiT(video=video, **KW))
    xp = MoEDiT(video=video, prediction="sample", min_sigma=0.1, **KW).eval()
    xp.load_state_dict(vel.state_dict())
    ctx, mask = _ctx()
    x = torch.randn(2, 3, 3, 8, 8) if video else torch.randn(2, 3, 8, 8)
    t = torch.tensor([[600.0, 30.0, 0.0], [250.0, 250.0, 999.0]]) if video else torch.tensor([600.0, 30.0])
    sigma = (t / 1000).clamp(min=0.1)
    sigma = sigma[..., None, None, None] if video else sigma[:, None, None, None]
    raw = vel(x, t, ctx, mask)
    assert torch.allclose(xp(x, t, ctx, mask), (x - raw) / sigma, atol=1e-5)
    # an untrained x-prediction model predicts x0 = 0: the velocity points from 0 to x_s
    fresh = MoEDiT(video=video, prediction="sample", **KW).eval()
    assert torch.allclose(fresh(x, t, ctx, mask), x / (t / 1000).clamp(min=0.05).view(*sigma.shape), atol=1e-6)
    with pytest.raises(ValueError, match="prediction must be 'velocity' or 'sample'"):
        MoEDiT(prediction="epsilon", **KW)
