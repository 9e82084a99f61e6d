"""The export's formats are catalog datasets: export.output_dir moves them (globals or --params),
the node's outputs are published atomically by ExportDirectoryDataset, export.max_new_tokens takes
effect in the exported generation config and the registered pyfunc."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, DatasetError, MemoryDataset
from kedro.runner import SequentialRunner

from tests.export.export_helpers import make_model, run_export
from xoron_pipelines.datasets.export import ExportDirectoryDataset, ExportedArtifact
from xoron_pipelines.datasets.model import StageModelsDataset, XoronModelDataset
from xoron_pipelines.datasets.training_store import LoraAdapter, LoraAdapterDataset
from xoron_pipelines.pipelines.export.nodes import OUTPUTS
from xoron_pipelines.pipelines.export.params import STAGES
from xoron_pipelines.pipelines.export.pipeline import create_pipeline

FORMAT_ENTRIES = ("export_hf", "export_gguf", "export_onnx", "export_lora_adapter")
#: a data_processing packing manifest (the parts the model card reads)
MANIFEST = {
    "max_seq_len": 64,
    "sources": {"corpus_a": {"documents": 12, "tokens": 3456, "achieved_share": 0.75}},
    "splits": {"train": {"documents": 11, "tokens": 3000, "sequences": 50}},
}


def _config(project_root: Path, runtime_params=None):
    loader = OmegaConfigLoader(
        str(project_root / "conf"), base_env="base", default_run_env="local", runtime_params=runtime_params
    )
    return loader["catalog"], loader["parameters"]


@pytest.mark.parametrize("runtime", [None, {"export": {"output_dir": "elsewhere/exports"}}])
def test_output_dir_sets_every_export_entry_and_the_parameter(project_root, runtime):
    catalog, params = _config(project_root, runtime)
    root = params["export"]["output_dir"]
    assert root == ("elsewhere/exports" if runtime else "data/07_model_output/export")
    assert {name: catalog[name]["path"] for name in FORMAT_ENTRIES} == {
        "export_hf": f"{root}/hf",
        "export_gguf": f"{root}/gguf",
        "export_onnx": f"{root}/onnx",
        "export_lora_adapter": f"{root}/lora_adapter",
    }
    assert catalog["export_manifest"]["filepath"] == f"{root}/manifest.json"


def test_pipeline_outputs_are_the_format_datasets_then_the_manifest():
    node = create_pipeline().nodes[0]
    assert node.outputs == [*FORMAT_ENTRIES, "export_manifest", "export_metrics"] == OUTPUTS
    assert create_pipeline().from_nodes("export_model").outputs() == set(OUTPUTS)


def test_kedro_run_with_output_dir_writes_through_the_catalog(project_root, tokenizer, tmp_path, monkeypatch):
    """The export pipeline run by Kedro's runner on the project's catalog entries, with
    --params export.output_dir: the formats land there, the previous LoRA directory stays
    (the stage trained none), the manifest names the published paths."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "exports"
    conf, params = _config(project_root, {"export": {"output_dir": str(out)}})
    models = tmp_path / "06_models"
    XoronModelDataset(str(models / "code")).save(make_model("nano", tokenizer, num_layers=1))
    old_adapter = out / "lora_adapter"
    old_adapter.mkdir(parents=True)
    (old_adapter / "adapter_config.json").write_text("{}")
    catalog = DataCatalog.from_config(
        {name: conf[name] for name in (*FORMAT_ENTRIES, "export_manifest", "{stage}.lora_adapter")}
    )
    catalog["stage_models"] = StageModelsDataset(str(models))
    catalog["tokenizer"] = MemoryDataset(tokenizer, copy_mode="assign")
    catalog["packed_val"] = MemoryDataset(None)
    catalog["packing_manifest"] = MemoryDataset(MANIFEST)
    catalog["export_metrics"] = MemoryDataset()
    catalog["params:export"] = MemoryDataset(
        {
            **params["export"],
            "source": "code",
            "formats": ["hf", "gguf", "lora"],
            "gguf_types": ["q8_0"],
            "register_mlflow": False,
        }
    )
    for stage in STAGES:
        catalog[f"{stage}.train_summary"] = MemoryDataset({"stage": stage, "lora_adapter": None})
        catalog.save(f"{stage}.lora_adapter", LoraAdapter())  # what a stage without LoRA writes
    SequentialRunner().run(create_pipeline(), catalog)

    assert (out / "hf" / "config.json").is_file() and (out / "gguf" / "model-q8_0.gguf").is_file()
    assert catalog.load("export_hf") == out / "hf"
    assert (old_adapter / "adapter_config.json").read_text() == "{}"
    assert not (out / "onnx").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["formats"]["hf"]["path"] == str(out / "hf")
    assert manifest["formats"]["gguf"][0]["path"] == str(out / "gguf" / "model-q8_0.gguf")
    assert manifest["formats"]["lora"]["path"] is None
    card = (out / "hf" / "README.md").read_text()  # the catalog's packing_manifest is the card's data
    assert "datasets:\n- corpus_a" in card and "| corpus_a | 12 | 3,456 | 0.75 |" in card


def test_kedro_run_publishes_the_source_stages_lora_adapter_from_the_catalog(
    project_root, tokenizer, tmp_path, monkeypatch
):
    """The project's ``{stage}.lora_adapter`` entries feed the export node: the source stage's
    adapter (as training saved it) is published byte for byte as lora_adapter/, not another stage's."""
    from peft import LoraConfig, get_peft_model

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "exports"
    conf, params = _config(project_root, {"export": {"output_dir": str(out)}})
    catalog = DataCatalog.from_config(
        {name: conf[name] for name in (*FORMAT_ENTRIES, "export_manifest", "{stage}.lora_adapter")}
    )
    model = make_model("nano", tokenizer, num_layers=1)
    adapters = {stage: LoraAdapter() for stage in STAGES}
    for seed, stage in enumerate(("code", "tools")):
        config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
        adapters[stage] = LoraAdapter.of(get_peft_model(make_model("nano", tokenizer, seed=seed, num_layers=1), config))
    assert adapters["code"].files != adapters["tools"].files
    for stage in STAGES:
        catalog.save(f"{stage}.lora_adapter", adapters[stage])
        catalog[f"{stage}.train_summary"] = MemoryDataset(
            {"stage": stage, "lora_adapter": f"{stage}.lora_adapter" if adapters[stage] else None}
        )
    catalog["stage_models"] = MemoryDataset({"code": model}, copy_mode="assign")
    catalog["tokenizer"] = MemoryDataset(tokenizer, copy_mode="assign")
    catalog["packed_val"] = MemoryDataset(None)
    catalog["packing_manifest"] = MemoryDataset(MANIFEST)
    catalog["export_metrics"] = MemoryDataset()
    catalog["params:export"] = MemoryDataset(
        {**params["export"], "source": "code", "formats": ["lora"], "register_mlflow": False}
    )
    SequentialRunner().run(create_pipeline(), catalog)

    published = {
        p.relative_to(out / "lora_adapter").as_posix(): p.read_bytes()
        for p in (out / "lora_adapter").rglob("*")
        if p.is_file()
    }
    assert published == adapters["code"].files
    assert (tmp_path / "data/06_models/lora_adapters/code/adapter_config.json").is_file()  # the catalog's copy
    assert json.loads((out / "manifest.json").read_text())["formats"]["lora"]["path"] == str(out / "lora_adapter")


def test_dataset_refuses_an_export_built_for_another_directory(tmp_path):
    target = tmp_path / "export" / "hf"
    target.mkdir(parents=True)
    (target / "config.json").write_text("previous")
    staged = tmp_path / "staged" / "hf"
    staged.mkdir(parents=True)
    (staged / "config.json").write_text("new")
    dataset = ExportDirectoryDataset(str(target), marker="config.json")
    with pytest.raises(DatasetError, match=f"built for {tmp_path / 'other'}.*writes {target}.*export.output_dir"):
        dataset.save(ExportedArtifact(staged, target=tmp_path / "other"))
    assert (target / "config.json").read_text() == "previous"
    with pytest.raises(DatasetError, match="expects an ExportedArtifact"):
        dataset.save(str(staged))


def test_dataset_replaces_the_whole_directory_and_removes_the_staged_one(tmp_path):
    target = tmp_path / "gguf"
    target.mkdir()
    (target / "model-f16.gguf").write_text("stale")
    staged = tmp_path / "staging" / "gguf"
    staged.mkdir(parents=True)
    (staged / "model-q8_0.gguf").write_text("new")
    dataset = ExportDirectoryDataset(str(target))
    dataset.save(ExportedArtifact(staged, target=target))
    assert sorted(p.name for p in target.iterdir()) == ["model-q8_0.gguf"] and not staged.exists()
    dataset.save(ExportedArtifact(None, reason="not in export.formats"))
    assert sorted(p.name for p in target.iterdir()) == ["model-q8_0.gguf"]
    with pytest.raises(DatasetError, match="no export at .*missing"):
        ExportDirectoryDataset(str(tmp_path / "none"), marker="report.json").load()


@pytest.mark.parametrize("max_new_tokens", [7, 11])
def test_max_new_tokens_is_the_exported_generation_default(tokenizer, tmp_path, max_new_tokens):
    """export.max_new_tokens: generation_config.json of hf/, generate()'s default length, and the
    length the registered pyfunc asks for unless the caller's params give another."""
    import torch
    from transformers import AutoModelForCausalLM

    from xoron_pipelines.export.mlflow_registry import HFTextGenerator

    run_export(
        make_model("nano", tokenizer, num_layers=1),
        tokenizer,
        None,
        None,
        {"output_dir": str(tmp_path), "formats": ["hf"], "register_mlflow": False, "max_new_tokens": max_new_tokens},
    )
    hf = tmp_path / "hf"
    assert json.loads((hf / "generation_config.json").read_text())["max_new_tokens"] == max_new_tokens
    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    ids = torch.tensor([tokenizer.encode("def add")])
    with torch.no_grad():
        produced = model.generate(ids, eos_token_id=None, pad_token_id=tokenizer.pad_token_id).shape[1] - ids.shape[1]
    assert produced == max_new_tokens

    pyfunc = HFTextGenerator()
    pyfunc.load_context(SimpleNamespace(artifacts={"hf_dir": str(hf)}))
    asked = []
    generate = pyfunc.model.generate
    pyfunc.model.generate = lambda *a, **kw: asked.append(kw["max_new_tokens"]) or generate(*a, **kw)
    pyfunc.predict(None, ["def add"])
    pyfunc.predict(None, ["def add"], params={"max_new_tokens": 3})
    assert asked == [max_new_tokens, 3]


def test_kedro_run_export_pipeline_end_to_end(kedro_project, tokenizer):
    """``kedro run --pipeline export --params export.output_dir=...,export.source=code`` in a
    project copy: the code stage's model goes to hf/ under that directory (nothing under the
    default one), the manifest beside it names the published paths and the registered version."""
    import torch
    import yaml
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from tests.helpers import run_pipeline
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset

    data = kedro_project / "data"
    HFTokenizerDataset(str(data / "05_model_input/tokenizer")).save(tokenizer)
    val = data / "05_model_input/packed/val"
    val.mkdir(parents=True)  # one packed row: the run's missing-inputs check wants the split there
    pq.write_table(
        pa.table({"input_ids": pa.array([[1, 2, 3, 4]], type=pa.list_(pa.int32()))}), val / "part-00000.parquet"
    )
    (data / "05_model_input/packing_manifest.json").write_text(json.dumps(MANIFEST))
    for seed, stage in enumerate(("code", "tools")):
        XoronModelDataset(str(data / "06_models" / stage)).save(make_model("nano", tokenizer, seed=seed, num_layers=1))
    (data / "08_reporting/training").mkdir(parents=True)
    for stage in STAGES:
        (data / "08_reporting/training" / f"{stage}.json").write_text(json.dumps({"stage": stage, "loss_of": stage}))
        LoraAdapterDataset(str(data / "06_models/lora_adapters" / stage)).save(LoraAdapter())  # trained without LoRA
    out = kedro_project / "elsewhere"
    run_pipeline(
        kedro_project,
        "export",
        {
            "export.output_dir": str(out),
            "export.source": "code",
            "export.formats": ["hf"],
            "export.registered_model_name": "xoron-e2e",
        },
    )

    assert not (data / "07_model_output/export").exists()
    exported = load_file(str(out / "hf" / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(exported, load_file(str(data / "06_models/code/model.safetensors"))["model.embed_tokens.weight"])
    card = (out / "hf" / "README.md").read_text()
    assert "**loss_of**: code" in card and "| corpus_a | 12 | 3,456 | 0.75 |" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "code" and manifest["formats"]["hf"]["path"] == str(out / "hf")
    uri = yaml.safe_load((kedro_project / "conf/local/mlflow.yml").read_text())["server"]["mlflow_tracking_uri"]
    versions = MlflowClient(uri).search_model_versions("name='xoron-e2e'")
    assert [int(v.version) for v in versions] == [int(manifest["mlflow"]["version"])] == [1]


def test_onnx_format_is_staged_published_and_its_figures_reconcile(tokenizer, tmp_path, monkeypatch):
    """formats: [onnx]: onnx/ holds model.onnx, model.int8.onnx and report.json; the MLflow
    metrics are the report's figures; the staging directory is gone once published."""
    import pyarrow as pa

    from xoron_pipelines.datasets.generation import STAGING_ENV
    from xoron_pipelines.datasets.parquet_shards import ParquetShardsDataset

    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setenv(STAGING_ENV, str(staging))
    rows = [[(7 * i + j) % 300 + 5 for j in range(16)] for i in range(3)]
    ParquetShardsDataset(str(tmp_path / "val")).save(pa.table({"input_ids": rows, "length": [16] * 3}))
    packed_val = ParquetShardsDataset(str(tmp_path / "val")).load()
    out = tmp_path / "export"
    manifest, metrics = run_export(
        make_model("nano", tokenizer, num_layers=1),
        tokenizer,
        packed_val,
        None,
        {
            "output_dir": str(out),
            "formats": ["onnx"],
            "register_mlflow": False,
            "onnx_eval_rows": 2,
            "onnx_eval_length": 16,
        },
    )
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model.int8.onnx", "model.onnx", "report.json"]
    report = json.loads((out / "onnx" / "report.json").read_text())
    assert manifest["formats"]["onnx"] == report and report["int8"]["tokens"] == 2 * 16
    assert metrics == {
        "onnx_max_abs_diff": {"value": report["fp32"]["max_abs_diff"], "step": 0},
        "onnx_int8_top1_agreement": {"value": report["int8"]["top1_agreement"], "step": 0},
        "onnx_int8_mean_kl": {"value": report["int8"]["mean_kl"], "step": 0},
    }
    assert sorted(p.name for p in out.iterdir()) == ["onnx"]
    assert [p for p in staging.rglob("*") if not p.is_dir()] == []


def test_a_failing_format_publishes_nothing_and_leaves_no_staged_files(tokenizer, tmp_path, monkeypatch):
    """hf/ is built, then the LoRA adapter is missing: the node fails, the staged hf/ is removed
    and nothing reaches export.output_dir."""
    from xoron_pipelines.datasets.generation import STAGING_ENV

    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setenv(STAGING_ENV, str(staging))
    out = tmp_path / "export"
    with pytest.raises(ValueError, match="LoRA adapter of stage tools is missing"):
        run_export(
            make_model("nano", tokenizer, num_layers=1),
            tokenizer,
            None,
            {"lora_adapter": "tools.lora_adapter"},
            {"output_dir": str(out), "formats": ["hf", "lora"], "register_mlflow": False, "source": "tools"},
            LoraAdapter(path=tmp_path / "gone"),
        )
    assert list(staging.iterdir()) == [] and not out.exists()
