"""LoRA adapter export (peft format + merged) and MLflow registration."""

from __future__ import annotations

import copy

import mlflow
import torch
from mlflow import MlflowClient
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.export.export_helpers import make_model
from xoron_pipelines.export.hf import export_hf
from xoron_pipelines.export.lora_export import export_lora
from xoron_pipelines.export.mlflow_registry import register_export
from xoron_pipelines.training.lora import LoraSettings, apply_lora


def test_lora_adapter_round_trips_and_merged_dir_matches(tokenizer, tmp_path):
    base = make_model("nano", tokenizer, num_layers=2)
    pristine = copy.deepcopy(base)
    adapted = apply_lora(base, LoraSettings(r=4, alpha=8, dropout=0.0, use_rslora=False))
    with torch.no_grad():  # trained-looking adapters: B != 0, so the adapter changes the output
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    adapted.eval()
    ids = torch.tensor([[3, 17, 42, 99, 7]])
    want = adapted(ids).logits
    assert not torch.allclose(want, pristine(ids).logits, atol=1e-4)
    info = export_lora(adapted, tmp_path, tokenizer)
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    reloaded = PeftModel.from_pretrained(pristine, tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(ids).logits, want)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert info["merged"]["architecture"] == "LlamaForCausalLM"
    torch.testing.assert_close(merged(ids).logits, want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(adapted(ids).logits, want)  # the caller's adapted model is untouched


def test_mlflow_registration_is_visible(tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # an earlier test in this worker may have left another database's experiment active
    mlflow.set_experiment("export-test")
    try:
        export_hf(make_model("nano", tokenizer, num_layers=1), tmp_path / "hf", tokenizer)
        with mlflow.start_run() as run:
            info = register_export(tmp_path / "hf", "xoron-export-test")
        assert info["run_id"] == run.info.run_id
        versions = MlflowClient().search_model_versions("name='xoron-export-test'")
        assert [(int(v.version), v.run_id) for v in versions] == [(1, run.info.run_id)]
        out = mlflow.pyfunc.load_model("models:/xoron-export-test/1").predict(["def add"], params=None)
        assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)
    finally:
        mlflow.set_tracking_uri(None)
