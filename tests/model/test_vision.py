"""Vision encoder (model/vision.py): shapes at any resolution, 2D-RoPE, TiTok, dual stream,
freezing, local Hugging Face towers, clear errors; plus the benchmark script's smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from xoron_pipelines.model.rope import apply_axial_rope, axial_rope_cos_sin, axial_rope_freqs, grid_coords
from xoron_pipelines.model.vision import (
    BlockStack,
    DualStreamBlock,
    EncoderOutput,
    PretrainedVisionEncoder,
    VisionBlock,
    VisionEncoder,
    VisionEncoderConfig,
    _Rope,
    build_vision_encoder,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PLAIN = dict(use_vision_titok=False, use_vision_dual_stream=False)
SIZES = [(32, 32), (16, 48), (40, 24)]


def _encoder(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_vision_encoder(VisionEncoderConfig(**kw))


def _images(h: int, w: int, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_patch_tokens_at_any_resolution_and_aspect_ratio():
    enc = _encoder(**PLAIN)
    assert isinstance(enc, VisionEncoder) and enc.hidden_size == 96
    for h, w in SIZES:
        out = enc(_images(h, w))
        assert isinstance(out, EncoderOutput) and out.mask is None
        assert out.extras["grid"] == (h // 8, w // 8)
        assert out.features.shape == (2, (h // 8) * (w // 8), 96)
        assert torch.isfinite(out.features).all()
    # no position table anywhere: the parameter count does not depend on a resolution
    assert not any("position" in n for n, _ in enc.named_parameters())


def _naive_axial_rope(x, cos, sin, inv_freqs):
    """Reference: rotate_half within each axis slice, written out per slice."""
    out, start = [], 0
    for inv in inv_freqs:
        d = 2 * inv.numel()
        xs = x[..., start : start + d]
        x1, x2 = xs[..., : d // 2], xs[..., d // 2 :]
        out.append(xs * cos[:, start : start + d] + torch.cat((-x2, x1), -1) * sin[:, start : start + d])
        start += d
    return torch.cat(out, -1)


@pytest.mark.parametrize("head_dim,axes", [(24, 2), (10, 2), (20, 3)])
def test_axial_rope_matches_the_per_slice_rotation_in_value_and_gradient(head_dim, axes):
    """apply_axial_rope's gather-based autograd Function against a plain per-slice rotation,
    with unequal axis slices too (head_dim 10: slices 6 + 4)."""
    torch.manual_seed(0)
    inv = axial_rope_freqs(head_dim, axes, 100.0)
    coords = grid_coords(*([3] * axes))
    cos, sin = (t.double() for t in axial_rope_cos_sin(coords, inv))
    x = torch.randn(2, 3, coords.shape[0], head_dim, dtype=torch.float64, requires_grad=True)
    ours = apply_axial_rope(x, cos, sin, inv)
    ref = _naive_axial_rope(x, cos, sin, inv)
    torch.testing.assert_close(ours, ref)
    grad = torch.randn_like(ref)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(g_ours, g_ref)


def test_2d_rope_attention_scores_depend_only_on_relative_positions():
    torch.manual_seed(0)
    block = VisionBlock(96, 4, 384, 1e-6)
    inv = axial_rope_freqs(24, 2, 100.0)
    coords = grid_coords(3, 5)
    x = torch.randn(2, 15, 96)

    def scores(c):
        q, k, _ = block.stream.qkv_heads(x, _Rope(c, inv))
        return q @ k.transpose(-1, -2)

    base = scores(coords)
    for shift in ([4, 0], [0, 7], [11, 3]):
        torch.testing.assert_close(scores(coords + torch.tensor(shift)), base, rtol=1e-4, atol=1e-4)
    # the rotation is real: without it the scores differ, and so they do for other relative layouts
    assert not torch.allclose(scores(None), base, atol=1e-3)
    assert not torch.allclose(scores(coords.flip(-1)), base, atol=1e-3)
    # the whole stack (single + dual blocks) is relative too
    stack = BlockStack(96, 4, 384, 1e-6, num_single=1, num_dual=1)
    torch.testing.assert_close(stack(x, coords + torch.tensor([5, 9])), stack(x, coords), rtol=1e-4, atol=1e-4)


def test_use_2d_rope_false_leaves_the_encoder_blind_to_patch_positions():
    """Swapping two patches of the image swaps their output tokens without RoPE, not with it."""
    img = _images(16, 32, b=1)
    swapped = img.clone()
    swapped[..., 0:8, 0:8], swapped[..., 8:16, 24:32] = img[..., 8:16, 24:32], img[..., 0:8, 0:8]
    order = torch.arange(8)
    order[0], order[7] = 7, 0  # patch 0 = (0, 0), patch 7 = (1, 3) in the 2 x 4 grid
    for rope, equivariant in ((False, True), (True, False)):
        enc = _encoder(use_2d_rope=rope, **PLAIN)
        a, b = enc(img).features, enc(swapped).features
        assert torch.allclose(b, a[:, order], atol=1e-5) is equivariant


@pytest.mark.parametrize("dual", [False, True])
def test_titok_gives_a_fixed_number_of_tokens_at_any_resolution(dual):
    for tokens in (8, 12):
        enc = _encoder(num_vision_titok_tokens=tokens, use_vision_dual_stream=dual)
        for h, w in SIZES:
            out = enc(_images(h, w))
            assert out.features.shape == (2, tokens, 96)
    # the latents read the image: different images give different latents
    enc = _encoder(num_vision_titok_tokens=8, use_vision_dual_stream=dual)
    assert not torch.allclose(enc(_images(32, 32, seed=1)).features, enc(_images(32, 32, seed=2)).features)


def test_titok_layers_set_where_the_latents_join():
    enc = _encoder(num_layers=3, num_vision_titok_layers=2, use_vision_dual_stream=False)
    assert enc.encoder.titok_start == 1
    # one block fewer than the stack: the first block's weights never see the latents, but they
    # shape the patches the latents attend to, so changing them changes the output
    x = _images(16, 16)
    before = enc(x).features
    with torch.no_grad():
        enc.encoder.blocks[0].stream.fc2.bias.add_(0.5)
    assert not torch.allclose(enc(x).features, before)


def test_dual_stream_layer_count_sets_the_structure_and_changes_outputs():
    def counts(enc):
        blocks = list(enc.encoder.blocks)
        return sum(isinstance(b, VisionBlock) for b in blocks), sum(isinstance(b, DualStreamBlock) for b in blocks)

    x = _images(24, 16)
    outs = {}
    for n in (1, 2, 3):
        enc = _encoder(num_layers=3, num_vision_dual_stream_layers=n, use_vision_titok=False)
        assert counts(enc) == (3 - n, n)
        assert enc.encoder.merge is not None
        outs[n] = enc(x).features
        assert outs[n].shape == (2, 6, 96)
    assert counts(_encoder(num_layers=3, **PLAIN)) == (3, 0)
    assert not torch.allclose(outs[1], outs[2]) and not torch.allclose(outs[2], outs[3])


def test_dual_stream_streams_exchange_information_and_merge_starts_as_their_mean():
    torch.manual_seed(0)
    block = DualStreamBlock(32, 2, 64, 1e-6)
    rope = _Rope(grid_coords(2, 3), axial_rope_freqs(16, 2, 100.0))
    xa, xb = torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    a1, b1 = block(xa, xb, rope)
    a2, _ = block(xa, xb + 1.0, rope)
    assert not torch.allclose(a1, a2)  # stream A reads stream B through the joint attention
    # separate weights: the two streams give different outputs for the same tokens
    a3, b3 = block(xa, xa, rope)
    assert not torch.allclose(a3, b3)
    stack = BlockStack(32, 2, 64, 1e-6, num_single=0, num_dual=1)
    y, z = torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    torch.testing.assert_close(stack.merge(torch.cat((y, z), -1)), (y + z) / 2)


CONFIGS = [
    dict(),  # TiTok + dual stream (defaults)
    PLAIN,
    dict(num_layers=3, num_vision_titok_layers=3, num_vision_dual_stream_layers=2),
    dict(use_vision_titok=False, num_vision_dual_stream_layers=2),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_every_parameter_gets_a_gradient_when_not_frozen(kw):
    enc = _encoder(**kw)
    enc.train()
    enc(_images(16, 24)).features.square().mean().backward()
    dead = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_freeze_vision_stops_gradients_and_keeps_eval_mode():
    enc = _encoder(freeze_vision=True)
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc(_images(16, 16)).features
    assert not out.requires_grad
    unfrozen = _encoder()
    unfrozen.train()
    assert unfrozen.training and all(p.requires_grad for p in unfrozen.parameters())


def test_bad_images_and_impossible_knobs_are_clear_errors():
    enc = _encoder(**PLAIN)
    with pytest.raises(ValueError, match=r"not a multiple of patch_size 8"):
        enc(_images(20, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.rand(3, 16, 16))
    with pytest.raises(ValidationError, match="num_vision_dual_stream_layers 3 exceeds num_layers 2"):
        VisionEncoderConfig(num_vision_dual_stream_layers=3)
    with pytest.raises(ValidationError, match="num_vision_titok_layers 4 exceeds num_layers 2"):
        VisionEncoderConfig(num_vision_titok_layers=4)
    with pytest.raises(ValidationError, match="not divisible by num_heads"):
        VisionEncoderConfig(hidden_size=90, num_heads=4)
    with pytest.raises(ValidationError, match="even head dim"):
        VisionEncoderConfig(hidden_size=36, num_heads=4)
    with pytest.raises(ValidationError, match="num_vision_titok_tokens"):
        VisionEncoderConfig(num_vision_titok_tokens=0)


def test_a_hub_id_or_a_folder_without_a_vision_model_is_refused(tmp_path):
    with pytest.raises(ValidationError, match=r"vision_model_name 'google/siglip-so400m-patch14-384' is not a local"):
        VisionEncoderConfig(vision_model_name="google/siglip-so400m-patch14-384")
    with pytest.raises(ValueError, match=r"vision_model_name .*cannot load a transformers model"):
        build_vision_encoder(VisionEncoderConfig(vision_model_name=str(tmp_path)))
    from transformers import BertConfig, BertModel

    text = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(text)
    with pytest.raises(ValueError, match=r"vision_model_name .*BertModel.*not a vision model"):
        build_vision_encoder(VisionEncoderConfig(vision_model_name=str(text)))


def _tiny_siglip_config():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8, image_size=32
    )


def test_local_siglip_dir_matches_siglip_vision_model_exactly(tmp_path):
    from transformers import SiglipVisionModel

    torch.manual_seed(0)
    SiglipVisionModel(_tiny_siglip_config()).save_pretrained(tmp_path / "siglip")
    enc = build_vision_encoder(VisionEncoderConfig(vision_model_name=str(tmp_path / "siglip"), **PLAIN))
    ref = SiglipVisionModel.from_pretrained(tmp_path / "siglip", local_files_only=True).eval()
    enc.eval()
    assert isinstance(enc, PretrainedVisionEncoder) and enc.hidden_size == 32
    with torch.no_grad():
        for h, w, interp in ((32, 32, False), (16, 40, True)):
            x = _images(h, w)
            out = enc(x)
            expect = ref(pixel_values=(x - 0.5) / 0.5, interpolate_pos_encoding=interp).last_hidden_state
            assert out.features.shape == (2, (h // 8) * (w // 8), 32) and out.extras["grid"] == (h // 8, w // 8)
            assert torch.equal(out.features, expect)


def test_dual_encoder_dir_gives_its_vision_half_normalised_as_its_processor_says(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    cfg = SiglipConfig(
        text_config=dict(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64
        ),
        vision_config=_tiny_siglip_config().to_dict(),
    )
    model = SiglipModel(cfg).eval()
    model.save_pretrained(tmp_path / "dual")
    (tmp_path / "dual" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.4]})
    )
    enc = build_vision_encoder(VisionEncoderConfig(vision_model_name=str(tmp_path / "dual"), **PLAIN)).eval()
    x = _images(32, 32)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    with torch.no_grad():
        expect = model.vision_model(pixel_values=(x - mean) / std).last_hidden_state
        assert torch.equal(enc(x).features, expect)


def test_pretrained_tower_with_titok_and_dual_stream_freezes_only_the_tower(tmp_path):
    from transformers import SiglipVisionModel

    torch.manual_seed(0)
    SiglipVisionModel(_tiny_siglip_config()).save_pretrained(tmp_path / "siglip")
    enc = build_vision_encoder(
        VisionEncoderConfig(vision_model_name=str(tmp_path / "siglip"), freeze_vision=True, num_vision_titok_tokens=5)
    )
    enc.train()
    assert not enc.tower.training and enc.encoder.training
    # appended: one dual-stream block holding the TiTok latents (max(1, 1) blocks)
    assert [type(b) for b in enc.encoder.blocks] == [DualStreamBlock]
    for h, w in ((32, 32), (16, 24)):
        out = enc(_images(h, w)).features
        assert out.shape == (2, 5, 32)
    out.square().mean().backward()
    assert all(p.grad is None for p in enc.tower.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.encoder.parameters())


def test_benchmark_script_quick_run(tmp_path):
    """benchmarks/vision_encoder.py still runs and reports both sides (never checks timings)."""
    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / "vision_encoder.py"
    out = tmp_path / "v.json"
    # this tree's package first (the script runs from tmp_path)
    path = os.pathsep.join(p for p in (str(root / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--threads", "1", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SiglipVisionModel (sdpa)" in proc.stdout and "ratio" in proc.stdout
    res = json.loads(out.read_text())
    assert res["attn_implementation"] == "sdpa" and res["ratio"] > 0
    assert set(res["images_per_s"]) == {"xoron", "SiglipVisionModel"}
