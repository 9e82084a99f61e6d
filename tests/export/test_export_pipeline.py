"""Export pipeline: parameters, the source knob, preflight refusal before writing, manifest."""

from __future__ import annotations

import json

import pytest
from kedro.io import DatasetError
from pydantic import ValidationError

from tests.export.export_helpers import make_model
from tests.export.export_helpers import run_export as export_model
from tests.export.export_helpers import run_export_node as export_stage
from xoron_pipelines.datasets.model import StageModelsDataset, XoronModelDataset
from xoron_pipelines.datasets.training_store import LoraAdapter
from xoron_pipelines.pipelines.export.params import STAGES, Params
from xoron_pipelines.pipelines.export.pipeline import create_pipeline

NO_ADAPTERS = [LoraAdapter()] * len(STAGES)


def test_source_parameter_picks_the_stage_model(tokenizer, tmp_path):
    """export.source selects which data/06_models/<stage> the node exports (loaded lazily)."""
    import torch
    from safetensors.torch import load_file

    root = tmp_path / "06_models"
    for seed, stage in enumerate(("code", "tools")):
        XoronModelDataset(str(root / stage)).save(make_model("nano", tokenizer, seed=seed, num_layers=1))
    models = StageModelsDataset(str(root)).load()
    assert models.stages() == ["code", "tools"]
    with pytest.raises(DatasetError, match="no model for stage 'language'.*saved stages: \\['code', 'tools'\\]"):
        models["language"]
    out = tmp_path / "export"
    export_stage(
        models,
        tokenizer,
        None,
        None,
        {"output_dir": str(out), "formats": ["hf"], "register_mlflow": False, "source": "tools"},
        *[{}] * 4,
        *NO_ADAPTERS,
    )
    exported = load_file(str(out / "hf" / "model.safetensors"))
    chosen = load_file(str(root / "tools" / "model.safetensors"))
    other = load_file(str(root / "code" / "model.safetensors"))
    key = "model.embed_tokens.weight"
    assert torch.equal(exported[key], chosen[key]) and not torch.equal(exported[key], other[key])


def test_params_reject_impossible_values():
    Params.model_validate({})
    for bad in (
        {"source": "nope"},
        {"formats": ["hf", "hf"]},
        {"gguf_types": ["q4"]},
        {"formats": []},
        {"formats": ["gguf"], "register_mlflow": True},
        {"onnx_opset": 9},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            Params.model_validate(bad)


def test_peer_export_refused_before_anything_is_written(tokenizer, tmp_path):
    model = make_model("nano-peer", tokenizer)
    params = {"output_dir": str(tmp_path / "export"), "formats": ["hf", "gguf"], "register_mlflow": False}
    with pytest.raises(ValueError, match="gguf: PEER"):
        export_model(model, tokenizer, None, None, params)
    assert not (tmp_path / "export").exists()


def test_export_node_writes_hf_and_gguf_with_manifest(tokenizer, tmp_path):
    model = make_model("nano", tokenizer, num_layers=1)
    params = {
        "output_dir": str(tmp_path),
        "formats": ["hf", "gguf"],
        "gguf_types": ["q8_0"],
        "register_mlflow": False,
        "source": "tools",
    }
    manifest, metrics = export_model(model, tokenizer, None, {"final_eval_loss": 2.5}, params)
    assert manifest["source"] == "tools" and metrics == {}
    assert manifest["formats"]["hf"]["architecture"] == "LlamaForCausalLM"
    assert [g["type"] for g in manifest["formats"]["gguf"]] == ["q8_0"]
    assert (tmp_path / "gguf" / "model-q8_0.gguf").is_file() and not (tmp_path / "gguf" / "model-f16.gguf").exists()
    assert "final_eval_loss" in (tmp_path / "hf" / "README.md").read_text()
    assert json.loads((tmp_path / "hf" / "export_info.json").read_text())["stage"] == "tools"


def test_node_runs_after_every_training_stage_and_uses_the_source_summary(tokenizer, tmp_path):
    from xoron_pipelines.pipelines.training.pipeline import create_pipeline as training

    node = create_pipeline().nodes[0]
    produced = {out for n in training().nodes for out in n.outputs}
    assert {f"{s}.{name}" for s in STAGES for name in ("train_summary", "lora_adapter")} <= set(node.inputs) & produced
    model = make_model("nano", tokenizer, num_layers=1)
    summaries = [{"stage": s, "loss_of": s} for s in ("language", "code", "tools", "preference")]
    export_stage(
        {"code": model},
        tokenizer,
        None,
        None,
        {"output_dir": str(tmp_path), "formats": ["hf"], "register_mlflow": False, "source": "code"},
        *summaries,
        *NO_ADAPTERS,
    )
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "**loss_of**: code" in card and "**loss_of**: tools" not in card


def test_lora_adapter_of_the_stage_is_exported_in_peft_format(tokenizer, tmp_path):
    """formats: [lora] publishes the source stage's <stage>.lora_adapter (the node takes every
    stage's) to lora_adapter/ in peft format; a stage without LoRA writes nothing and says why; an
    adapter the summary records but that is empty or lacks its config is an error."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from xoron_pipelines.datasets.training_store import LoraAdapterDataset

    base = make_model("nano", tokenizer, num_layers=1)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    LoraAdapterDataset(str(tmp_path / "adapters" / "tools")).save(LoraAdapter.of(peft_model))
    adapter = LoraAdapterDataset(str(tmp_path / "adapters" / "tools")).load()  # as the catalog gives it
    other = LoraAdapter({"adapter_config.json": b"{}", "adapter_model.safetensors": b"another stage's"})
    adapters = {"language": LoraAdapter(), "code": other, "tools": adapter, "preference": other}
    summaries = [{"lora_adapter": f"{s}.lora_adapter" if adapters[s] else None} for s in STAGES]
    params = {"output_dir": str(tmp_path / "out"), "formats": ["lora"], "register_mlflow": False, "source": "tools"}
    outputs = export_stage(
        {"tools": peft_model.merge_and_unload()},
        tokenizer,
        None,
        None,
        params,
        *summaries,
        *(adapters[s] for s in STAGES),
    )
    exported = tmp_path / "out" / "lora_adapter"
    assert outputs["export_manifest"]["formats"]["lora"]["path"] == str(exported)
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == adapter.files  # the source stage's, as saved
    reloaded = PeftModel.from_pretrained(make_model("nano", tokenizer, num_layers=1), str(exported)).eval()
    ids = torch.randint(0, 100, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, peft_model.eval()(input_ids=ids).logits)
    with pytest.raises(ValueError, match="train summary and a LoRA adapter per stage"):
        export_stage({"tools": base}, tokenizer, None, None, params, *summaries)

    manifest, _ = export_model(
        base, tokenizer, None, {"lora_adapter": None}, {**params, "output_dir": str(tmp_path / "o2")}, LoraAdapter()
    )
    assert manifest["formats"]["lora"]["path"] is None and not (tmp_path / "o2" / "lora_adapter").exists()
    with pytest.raises(ValueError, match="LoRA adapter of stage tools is missing"):
        export_model(
            base, tokenizer, None, {"lora_adapter": "tools.lora_adapter"}, params, LoraAdapter(path=tmp_path / "gone")
        )
    with pytest.raises(ValueError, match=f"stage tools at {tmp_path / 'bad'} has no adapter_config.json"):
        export_model(
            base,
            tokenizer,
            None,
            {"lora_adapter": "tools.lora_adapter"},
            params,
            LoraAdapter({"adapter_model.safetensors": b"x"}, tmp_path / "bad"),
        )
