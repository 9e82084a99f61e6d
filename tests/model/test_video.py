"""Video encoder: block-causal 3D attention, 3D-RoPE vs learned positions, temporal MoE routed by
motion and balanced like the LLM's MoE, variable frame counts and resolutions, config errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from xoron_pipelines.model.video import TemporalMoE, VideoEncoderConfig, build_video_encoder

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _encoder(seed: int = 0, **knobs):
    torch.manual_seed(seed)
    return build_video_encoder(VideoEncoderConfig(hidden_size=48, num_heads=4, **knobs))


def _clip(frames=8, size=32, seed=0, batch=2):
    return torch.rand(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _square_clip(positions, size=32, side=8):
    """(1, T, 3, size, size): a white square on black whose left edge is at ``positions[t]``."""
    clip = torch.zeros(1, len(positions), 3, size, size)
    for t, x in enumerate(positions):
        clip[0, t, :, 12 : 12 + side, x : x + side] = 1.0
    return clip


@pytest.mark.parametrize("moe", [True, False])
def test_attention_is_causal_in_time(moe):
    """Tokens at time step <= s depend on frames of steps <= s only (bit-exact), not on later ones;
    an earlier frame changes later tokens; causal_time false lets later frames reach back."""
    enc = _encoder(use_video_temporal_moe=moe).eval()
    clip = _clip()  # 8 frames, tubelet 2 -> 4 time steps of 4x4 tokens
    per_step = 16
    with torch.no_grad():
        base = enc(clip)
        later = clip.clone()
        later[:, 4:] = torch.rand_like(later[:, 4:])  # frames of steps 2 and 3
        out = enc(later)
        assert torch.equal(out.features[:, : 2 * per_step], base.features[:, : 2 * per_step])
        assert torch.equal(out.extras["frame_features"][:, :2], base.extras["frame_features"][:, :2])
        assert (out.features[:, 2 * per_step :] - base.features[:, 2 * per_step :]).abs().amax() > 0.1
        if moe:
            assert torch.equal(
                out.extras["router_probs"][:, :, : 2 * per_step], base.extras["router_probs"][:, :, : 2 * per_step]
            )
        earlier = clip.clone()
        earlier[:, 0] = torch.rand_like(earlier[:, 0])  # a frame of step 0
        out = enc(earlier)
        for step in range(4):
            tokens = slice(step * per_step, (step + 1) * per_step)
            assert (out.features[:, tokens] - base.features[:, tokens]).abs().amax() > 0.1, step
        bidirectional = _encoder(use_video_temporal_moe=moe, causal_time=False).eval()
        a, b = bidirectional(clip).features, bidirectional(later).features
        assert (a[:, :per_step] - b[:, :per_step]).abs().amax() > 0.1


def test_routing_changes_when_only_motion_changes():
    """Same tokens at the last time step, different previous step (static vs moving square): the
    router's probabilities and choices there differ; with the motion projection zeroed they agree,
    so the difference is the motion feature's."""
    enc = _encoder(seed=1).eval()
    static = _square_clip([16] * 8)
    moving = _square_clip([4, 4, 8, 8, 12, 12, 16, 16])  # last tubelet identical to the static clip's
    moe: TemporalMoE = enc.layers[0].moe
    with torch.no_grad():
        tokens_s, grid = enc.tokenize(static)
        tokens_m, _ = enc.tokenize(moving)
        last = slice(3 * 16, 4 * 16)
        assert torch.equal(tokens_s[:, last], tokens_m[:, last])
        moe(tokens_s, grid)
        probs_s = moe.router_probs.clone()
        moe(tokens_m, grid)
        probs_m = moe.router_probs.clone()
        assert (probs_s[:, last] - probs_m[:, last]).abs().amax() > 1e-3
        k = enc.config.num_video_experts_per_tok
        top_s = (probs_s[:, last] + moe.gate.e_score_correction_bias).topk(k).indices
        top_m = (probs_m[:, last] + moe.gate.e_score_correction_bias).topk(k).indices
        assert not torch.equal(top_s, top_m)
        moe.motion_proj.weight.zero_()
        moe(tokens_s, grid)
        probs_s = moe.router_probs.clone()
        moe(tokens_m, grid)
        assert torch.equal(probs_s[:, last], moe.router_probs[:, last])
    # the whole encoder routes the static and the moving clip differently as well
    with torch.no_grad():
        assert not torch.allclose(enc(static).extras["router_probs"], enc(moving).extras["router_probs"])


def test_expert_count_and_moe_knob_change_the_structure():
    for experts in (2, 5):
        enc = _encoder(num_video_experts=experts, num_video_experts_per_tok=1, expert_intermediate_size=32)
        for moe in enc.moe_layers():
            assert moe.gate.weight.shape == (experts, 48)
            assert moe.experts.gate_up_proj.shape == (experts, 64, 48)
            assert moe.experts.down_proj.shape == (experts, 48, 32)
        out = enc(_clip(batch=1))
        assert out.extras["router_probs"].shape == (2, 1, 64, experts)
        torch.testing.assert_close(out.extras["router_probs"].sum(-1), torch.ones(2, 1, 64))
    dense = _encoder(use_video_temporal_moe=False, intermediate_size=80)
    assert dense.moe_layers() == [] and dense.layers[0].mlp.gate_proj.weight.shape == (80, 48)
    out = dense(_clip(batch=1))
    assert "router_probs" not in out.extras and "aux_loss" not in out.extras


def _skewed_moe(rate: float) -> tuple[TemporalMoE, torch.Tensor]:
    """A top-1 temporal MoE whose router sends ~80% of the tokens to expert 0 before balancing."""
    torch.manual_seed(0)
    cfg = VideoEncoderConfig(hidden_size=48, num_heads=4, num_video_experts_per_tok=1, bias_update_rate=rate)
    moe = TemporalMoE(cfg)
    direction = torch.nn.functional.normalize(torch.randn(48), dim=0)
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.3)
        moe.gate.weight[0] += 3 * direction
    return moe.train(), direction


@pytest.mark.parametrize("rate", [0.05, 0.0])
def test_bias_balancing_keeps_the_load_from_collapsing(rate):
    """bias_update_rate > 0 (update_bias once per step, as the LLM's MoE) brings a skewed router
    to near-uniform load within 20 steps; rate 0 leaves it skewed and the bias at zero."""
    moe, direction = _skewed_moe(rate)
    gen = torch.Generator().manual_seed(1)
    first_load = None
    for step in range(30):
        if step == 20:
            moe.reset_load_stats()  # measure the last 10 steps
        moe(torch.randn(2, 4 * 16, 48, generator=gen) + 2 * direction, (4, 4, 4))
        first_load = moe.expert_load() if first_load is None else first_load
        moe.update_bias()
    assert first_load[0] > 0.75 and first_load.argmax() == 0  # skewed at the start
    late = moe.total_tokens_per_expert.float() / moe.total_tokens_per_expert.sum()
    if rate > 0:
        assert late.max() < 0.35, late  # uniform is 0.25
        assert moe.gate.e_score_correction_bias[0] < 0
    else:
        assert late[0] > 0.7, late
        assert torch.equal(moe.gate.e_score_correction_bias, torch.zeros(4))


def test_encoder_update_and_aux_loss_reach_every_moe_layer():
    enc = _encoder(aux_loss_coef=0.01, num_video_encoder_layers=3).train()
    out = enc(_clip())
    aux = out.extras["aux_loss"]
    assert aux.item() >= 0.01 - 1e-6  # coef * loss, and the loss is >= 1 (1 at uniform routing)
    aux.backward()
    assert all(m.gate.weight.grad.abs().sum() > 0 for m in enc.moe_layers())
    enc.update_moe_bias()
    assert all(m.gate.e_score_correction_bias.abs().sum() > 0 for m in enc.moe_layers())
    assert _encoder().train()(_clip()).extras["aux_loss"].item() == 0.0


@pytest.mark.parametrize("rope", [True, False])
def test_gradients_flow_and_depth_knob(rope):
    enc = _encoder(use_video_3d_rope=rope).train()
    out = enc(_clip())
    (out.features.square().mean() + out.extras["frame_features"].mean()).backward()
    missing = [name for name, p in enc.named_parameters() if p.grad is None]
    assert missing == []
    for name in (
        "patch_embed.weight",
        "layers.0.qkv.weight",
        "layers.0.moe.gate.weight",
        "layers.0.moe.motion_proj.weight",
    ):
        assert enc.get_parameter(name).grad.abs().sum() > 0, name
    if not rope:
        assert enc.pos_t.weight.grad.abs().sum() > 0 and enc.pos_x.weight.grad.abs().sum() > 0
    one, three = _encoder(num_video_encoder_layers=1), _encoder(num_video_encoder_layers=3)
    block = sum(p.numel() for p in one.layers[0].parameters())
    assert len(three.layers) == 3
    assert sum(p.numel() for p in three.parameters()) - sum(p.numel() for p in one.parameters()) == 2 * block


@pytest.mark.parametrize("rope", [True, False])
def test_frame_count_and_resolution_vary_per_batch(rope):
    enc = _encoder(use_video_3d_rope=rope).eval()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        for batch, frames, height, width in ((2, 8, 32, 48), (1, 12, 64, 24), (1, 9, 16, 16)):
            clip = torch.rand(batch, frames, 3, height, width)
            out = enc(clip)
            t, h, w = -(-frames // 2), height // 8, width // 8
            assert out.extras["grid"] == (t, h, w)
            assert out.features.shape == (batch, t * h * w, 48) and out.mask is None
            assert out.extras["frame_features"].shape == (batch, t, 48)
            torch.testing.assert_close(out.extras["frame_features"], out.features.view(batch, t, h * w, 48).mean(2))
            assert torch.isfinite(out.features).all()
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    # 9 frames: the last tubelet repeats frame 8, so it equals a clip with frame 8 doubled
    torch.testing.assert_close(enc(clip).features, enc(torch.cat((clip, clip[:, -1:]), 1)).features)
    if not rope:
        with pytest.raises(ValueError, match=r"exceeds the learned position tables"):
            enc(torch.rand(1, 2, 3, 392, 8))


@pytest.mark.parametrize("rope", [True, False])
def test_positions_take_effect(rope):
    """Rolling the clip by one patch column moves every token; a position-blind encoder would just
    roll its output (checked by removing the positions), a position-aware one does not."""
    enc = _encoder(use_video_3d_rope=rope, use_video_temporal_moe=False, causal_time=False).eval()
    clip = _clip(batch=1)
    rolled = torch.roll(clip, shifts=8, dims=-1)

    def grid_roll(features):
        return torch.roll(features.view(1, 4, 4, 4, 48), shifts=1, dims=3).reshape(1, 64, 48)

    with torch.no_grad():
        assert (grid_roll(enc(clip).features) - enc(rolled).features).abs().amax() > 1e-2
        enc._positions = lambda tokens, grid: (tokens, None)  # no positions at all
        torch.testing.assert_close(grid_roll(enc(clip).features), enc(rolled).features, rtol=1e-4, atol=1e-4)


def test_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="not a multiple of num_heads"):
        VideoEncoderConfig(hidden_size=96, num_heads=5)
    with pytest.raises(ValidationError, match="3D-RoPE needs an even head dim"):
        VideoEncoderConfig(hidden_size=16, num_heads=4)
    VideoEncoderConfig(hidden_size=16, num_heads=4, use_video_3d_rope=False)
    with pytest.raises(ValidationError, match="num_video_experts_per_tok 3 exceeds num_video_experts 2"):
        VideoEncoderConfig(num_video_experts=2, num_video_experts_per_tok=3)
    with pytest.raises(ValidationError, match="num_video_layers"):
        VideoEncoderConfig(num_video_layers=4)
    enc = build_video_encoder({"num_video_encoder_layers": 1})
    with pytest.raises(ValueError, match=r"not multiples of patch_size 8"):
        enc(torch.rand(1, 2, 3, 30, 32))
    with pytest.raises(ValueError, match=r"expects \(B, T, 3, H, W\)"):
        enc(torch.rand(1, 3, 32, 32))
