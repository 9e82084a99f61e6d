"""HF directory export: native classes load offline without remote code; greedy parity; atomicity."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.export.export_helpers import make_model
from xoron_pipelines.export import hf as hf_module
from xoron_pipelines.export.hf import export_hf

NATIVE = {"nano": "LlamaForCausalLM", "nano-moe-mla": "DeepseekV3ForCausalLM", "nano-gqa-moe": "Qwen2MoeForCausalLM"}


@pytest.mark.parametrize("preset", sorted(NATIVE))
def test_native_dir_loads_offline_and_generates_the_same(preset, tokenizer, tmp_path):
    model = make_model(preset, tokenizer)
    info = export_hf(model, tmp_path / "hf", tokenizer, stage="tools", summary={"final_eval_loss": 1.23})
    assert info["format"] == "native" and info["architecture"] == NATIVE[preset]
    native = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True, trust_remote_code=False)
    assert type(native).__name__ == NATIVE[preset]
    assert (
        tok.get_vocab() == tokenizer.get_vocab()
        and tok.chat_template == "{{- bos_token -}}\n" + tokenizer.chat_template
    )
    prompt = torch.tensor([tok.encode("def add(x, y):\n    return")])
    ours = model.generate(prompt, max_new_tokens=12, eos_token_id=-1)
    theirs = native.eval().generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert theirs.tolist() == ours.tolist()
    assert len(set(ours[0, prompt.shape[1] :].tolist())) > 1  # a real sequence, not one repeated token
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|/assistant|>")]
    assert gen["do_sample"] is False
    card = (tmp_path / "hf" / "README.md").read_text()
    assert NATIVE[preset] in card and "final_eval_loss" in card and "`tools` stage" in card


def test_peer_dir_is_xoron_format_and_says_why(tokenizer, tmp_path):
    import xoron_pipelines.model  # noqa: F401

    model = make_model("nano-peer", tokenizer)
    info = export_hf(model, tmp_path / "hf", tokenizer)
    assert info["format"] == "xoron" and any("PEER" in r for r in info["unsupported"])
    assert "PEER" in (tmp_path / "hf" / "README.md").read_text()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_failed_hf_export_leaves_previous_dir_intact(tokenizer, tmp_path, monkeypatch):
    target = tmp_path / "hf"
    export_hf(make_model("nano", tokenizer, num_layers=1), target, tokenizer)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("crash while writing the card")

    monkeypatch.setattr(hf_module, "model_card", boom)
    with pytest.raises(RuntimeError, match="crash"):
        export_hf(make_model("nano", tokenizer, seed=3, num_layers=1), target, tokenizer)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary leftovers
