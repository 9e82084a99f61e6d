"""save_multimodal / load_multimodal: identical logits after a round trip, safetensors only, the LLM
part loadable by native transformers, a local HF vision tower saved so AutoModel loads it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

from tests.model.multimodal_helpers import mixed_batch, open_gates, tiny_model
from xoron_pipelines.export.multimodal import load_multimodal, save_multimodal
from xoron_pipelines.training.lora import LoraSettings, apply_lora

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def single_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _no_pickle(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("torch.load (pickle) was called")

    monkeypatch.setattr(torch, "load", refuse)


def _logits(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model(**batch).logits, model(batch["input_ids"]).logits


def test_round_trip_gives_identical_logits(tmp_path, tokenizer, monkeypatch):
    batch = mixed_batch(tokenizer)
    model = tiny_model(tokenizer, asr_loss_weight=0.3, projector_type="mlp")
    open_gates(model)
    with torch.no_grad():  # weights that differ from a fresh build's
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = save_multimodal(model, tokenizer, tmp_path / "mm")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "llm/config.json", "llm/model.safetensors"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    meta = json.loads((out / "config.json").read_text())
    assert meta["multimodal"]["projector_type"] == "mlp" and meta["multimodal"]["asr_loss_weight"] == 0.3
    assert meta["multimodal"]["audio"]["hidden_size"] == 32 and meta["multimodal"]["video"]["num_heads"] == 2
    assert meta["llm_config"]["hidden_size"] == 64
    _no_pickle(monkeypatch)
    loaded = load_multimodal(out)
    assert loaded.config == model.config and loaded.media_token_ids == model.media_token_ids
    assert (
        loaded.llm.generation_config.eos_token_id
        == json.loads((out / "llm/generation_config.json").read_text())["eos_token_id"]
    )
    for got, want in zip(_logits(loaded, batch), _logits(model, batch), strict=True):
        assert torch.equal(got, want)
    # the LLM part loads with plain transformers (Llama here) and is the multimodal model's LLM
    native = AutoModelForCausalLM.from_pretrained(out / "llm")
    assert type(native).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(native(batch["input_ids"]).logits, _logits(model, batch)[1], rtol=1e-4, atol=1e-4)


def test_local_hf_vision_tower_is_saved_for_automodel(tmp_path, tokenizer, monkeypatch):
    torch.manual_seed(0)
    source = tmp_path / "siglip"
    tower_cfg = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    SiglipVisionModel(tower_cfg).save_pretrained(source)
    (source / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4] * 3, "image_std": [0.3] * 3}))
    model = tiny_model(
        tokenizer,
        modalities=["image"],
        vision={"vision_model_name": str(source), "use_vision_titok": False, "use_vision_dual_stream": False},
    )
    with torch.no_grad():  # "trained": the saved tower must hold these weights, not the source's
        for p in model.encoders["image"].tower.parameters():
            p.add_(0.05)
    batch = {k: v for k, v in mixed_batch(tokenizer).items() if k in ("input_ids", "images")}
    batch["input_ids"] = batch["input_ids"][:2]
    want = _logits(model, batch)
    out = save_multimodal(model, tokenizer, tmp_path / "mm")
    shutil.rmtree(source)  # the export is self-contained
    tower = AutoModel.from_pretrained(out / "vision_model")
    assert isinstance(tower, SiglipVisionModel)
    saved = getattr(tower, "vision_model", tower).state_dict()
    for name, tensor in model.encoders["image"].tower.state_dict().items():
        assert torch.equal(saved[name], tensor), name
    assert json.loads((out / "vision_model" / "preprocessor_config.json").read_text())["image_mean"] == [0.4] * 3
    _no_pickle(monkeypatch)
    loaded = load_multimodal(out)
    assert loaded.config.vision.vision_model_name == str(out / "vision_model")
    for got, exp in zip(_logits(loaded, batch), want, strict=True):
        assert torch.equal(got, exp)


def test_lora_wrapped_llm_is_refused_until_merged(tmp_path, tokenizer):
    from tests.model.multimodal_helpers import tiny_llm

    llm = apply_lora(tiny_llm(tokenizer), LoraSettings(r=4, alpha=8, dropout=0.0))
    model = tiny_model(tokenizer, llm=llm, modalities=["audio"])
    with pytest.raises(ValueError, match="LoRA-wrapped; merge the adapters first"):
        save_multimodal(model, tokenizer, tmp_path / "mm")
    assert not (tmp_path / "mm").exists()
    save_multimodal(model.merge_lora(), tokenizer, tmp_path / "mm")
    assert load_multimodal(tmp_path / "mm").config.modalities == ["audio"]


def test_load_refuses_other_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_multimodal(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="expected 'xoron-multimodal'"):
        load_multimodal(tmp_path)
