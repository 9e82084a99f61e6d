"""Kedro conventions a user of kedro viz expects: every catalog entry on a layer that matches its
data/ folder, node names that say their stage, every node tagged with its pipeline."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.helpers import PROJECT_ROOT
from xoron_pipelines.hooks import all_pipelines

#: kedro-viz layers in data-engineering order; data/0<i>_<layer> is layer i
LAYERS = (
    "raw",
    "intermediate",
    "primary",
    "feature",
    "model_input",
    "models",
    "model_output",
    "reporting",
)


def _catalog() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "catalog.yml").read_text())


def _paths(entry: dict) -> list[str]:
    """The filepath / path / root values of an entry and of its wrapped dataset."""
    found = [str(entry[k]) for k in ("filepath", "path", "root") if k in entry]
    inner = entry.get("dataset")
    return found + (_paths(inner) if isinstance(inner, dict) else [])


def test_every_catalog_entry_has_the_layer_of_its_data_folder():
    catalog = _catalog()
    assert len(catalog) > 40
    for name, entry in catalog.items():
        layer = ((entry.get("metadata") or {}).get("kedro-viz") or {}).get("layer")
        assert layer in LAYERS, f"{name}: kedro-viz layer {layer!r}"
        for path in _paths(entry):
            folder = re.search(r"data/0(\d)_(\w+)", path)
            if folder:
                assert LAYERS[int(folder.group(1)) - 1] == folder.group(2) == layer, f"{name}: {path} on {layer}"


def test_kedro_loads_the_catalog_with_its_layers(tmp_path):
    """The metadata is accepted by every dataset class (Kedro passes it to the constructor)."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    conf = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="local")
    catalog = DataCatalog.from_config(conf["catalog"])
    for name in ("record_ledger", "tokenizer", "language.model", "evaluation_comparison", "export_hf"):
        assert catalog.get(name).metadata["kedro-viz"]["layer"] in LAYERS


@pytest.fixture(scope="module")
def pipelines():
    return all_pipelines()


def test_node_names_are_unique_and_a_stage_node_names_its_stage(pipelines):
    everything = sum(pipelines.values(), start=next(iter(pipelines.values())))
    names = [node.name for node in everything.nodes]
    assert len(names) == len(set(names))
    namespaced = [node for node in everything.nodes if node.namespace]
    assert len(namespaced) >= 4 * 5  # 4 training + 4 x 4 evaluation nodes at least
    for node in namespaced:
        short = node.name.removeprefix(f"{node.namespace}.")
        assert node.namespace.split(".")[-1] in short, f"{node.name} does not name its stage (or variant)"
    assert "language.train_language" in names and "preference.train_preference" in names


def test_every_node_carries_its_pipeline_tag(pipelines):
    assert {"synth", "data_processing", "pretrain", "finetune", "evaluation", "export"} <= set(pipelines)
    for name, pipe in pipelines.items():
        untagged = [node.name for node in pipe.nodes if name not in node.tags]
        assert not untagged, f"pipeline {name}: nodes without the tag {name!r}: {untagged}"
