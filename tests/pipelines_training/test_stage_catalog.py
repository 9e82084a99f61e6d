"""A stage's side outputs go through the catalog: its checkpoint store (``<stage>.checkpoints``)
and its LoRA adapter (``<stage>.lora_adapter``, peft format); ``checkpoint_dir`` replaces the store."""

from __future__ import annotations

import pytest
import torch
from kedro.io import DataCatalog, DatasetError
from peft import PeftModel

from tests.pipelines_training.stage_helpers import packed_shards, stage
from tests.training.finetune_helpers import nano_model
from xoron_pipelines.datasets.parquet_shards import PackedMixes
from xoron_pipelines.datasets.training_store import (
    CheckpointStore,
    CheckpointStoreDataset,
    LoraAdapter,
    LoraAdapterDataset,
)
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training.schema import StageParams
from xoron_pipelines.training.stage import checkpoint_root

LORA = {
    "enabled": True,
    "r": 4,
    "alpha": 8,
    "train_lora_only": True,
    "target_modules": ["q_proj", "v_proj"],
    "use_lora_plus": False,
}


@pytest.fixture()
def shards(tmp_path):
    return packed_shards(tmp_path / "train", rows=16), packed_shards(tmp_path / "val", rows=8, seed=1)


def _lm(model, shards, params, store=None):
    return nodes.train_causal_lm(
        model, None, *shards, PackedMixes(shards[0].path.parent / "none"), params, store, stage="s", with_adapter=True
    )


def test_the_stage_writes_its_checkpoints_into_the_catalog_store(tmp_path, shards):
    store = CheckpointStoreDataset(str(tmp_path / "store"), "s").load()
    assert store == CheckpointStore(tmp_path / "store", "s") and not store.path.exists()  # load reads nothing
    params = stage(tmp_path / "unused", train={"max_steps": 2, "save_steps": 1})
    del params["checkpoint_dir"]
    _, summary, adapter = _lm(nano_model(), shards, params, store)
    (config,) = store.path.iterdir()
    assert config.name == summary["fingerprint"] and (config / "checkpoint-2").is_dir()
    assert not (tmp_path / "unused").exists() and not adapter  # no LoRA: an empty adapter
    _, again, _ = _lm(nano_model(), shards, params, store)
    assert again["resumed_from"] == str(config / "checkpoint-2")  # the rerun resumes from the store


def test_checkpoint_dir_replaces_the_store_and_one_of_them_is_needed(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "store", "s")
    base = {"train": {"max_steps": 1}}
    assert checkpoint_root("s", StageParams.model_validate(base), store) == tmp_path / "store"
    with caplog.at_level("INFO"):
        own = StageParams.model_validate({**base, "checkpoint_dir": str(tmp_path / "shared")})
        assert checkpoint_root("s", own, store) == tmp_path / "shared"
    assert "replaces the catalog's s.checkpoints" in caplog.text
    with pytest.raises(ValueError, match="no checkpoint location"):
        checkpoint_root("s", StageParams.model_validate(base), None)
    with pytest.raises(ValueError, match="stage 'other'"):
        checkpoint_root("s", StageParams.model_validate(base), CheckpointStore(tmp_path, "other"))
    with pytest.raises(DatasetError, match="not a node output"):
        CheckpointStoreDataset(str(tmp_path), "s").save(store)


def test_the_lora_adapter_is_a_node_output_in_peft_format(tmp_path, shards):
    model = nano_model()
    trained, summary, adapter = _lm(model, shards, stage(tmp_path / "ck", lora=LORA))
    assert adapter and {"adapter_config.json", "adapter_model.safetensors"} <= set(adapter.files)
    catalog = DataCatalog({"s.lora_adapter": LoraAdapterDataset(str(tmp_path / "adapters" / "s"))})
    catalog.save("s.lora_adapter", adapter)
    loaded = catalog.load("s.lora_adapter")
    assert loaded.files == adapter.files and loaded.path == tmp_path / "adapters" / "s"
    # base + the saved adapter = the stage's merged model
    reloaded = PeftModel.from_pretrained(nano_model(), str(loaded.path)).merge_and_unload().eval()
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained.eval()(input_ids=ids).logits)
    assert summary["lora_adapter"] == "s.lora_adapter"  # the summary names the dataset; no second copy
    assert not any(p.name == "lora_adapter" for p in (tmp_path / "ck").rglob("*"))


def test_a_stage_without_lora_saves_an_empty_adapter_and_a_missing_one_is_an_error(tmp_path):
    ds = LoraAdapterDataset(str(tmp_path / "a"))
    with pytest.raises(DatasetError, match="no LoRA adapter directory"):
        ds.load()
    ds.save(LoraAdapter())
    assert (tmp_path / "a").is_dir() and not ds.load()
    with pytest.raises(DatasetError, match="expects a LoraAdapter"):
        ds.save({"adapter_model.safetensors": b""})


def test_the_kedro_nodes_read_the_store_and_write_the_adapter():
    from xoron_pipelines.pipelines.training.pipeline import create_pipeline

    train = {n.name: n for n in create_pipeline().nodes}["tools.train_tools"]
    assert "tools.checkpoints" in train.inputs and "tools.lora_adapter" in train.outputs
