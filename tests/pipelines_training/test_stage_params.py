"""The stage parameters in conf/base validate, carry seed 001's learning rates, and the DAG chains
the stages (namespaces, each stage reading the previous stage's model)."""

from __future__ import annotations

import pytest
import yaml

from xoron_pipelines.pipelines.finetune.params import Params as FinetuneParams
from xoron_pipelines.pipelines.pretrain.params import Params as PretrainParams
from xoron_pipelines.validation import ParameterError, validate_group


def _conf(project_root, group):
    return yaml.safe_load((project_root / f"conf/base/parameters_{group}.yml").read_text())[group]


def test_conf_defaults_validate_with_seed_001_learning_rates(project_root):
    pre = validate_group("pretrain", _conf(project_root, "pretrain"), PretrainParams)
    fine = validate_group("finetune", _conf(project_root, "finetune"), FinetuneParams)
    lrs = {name: s.train.learning_rate for g in (pre, fine) for name, s in g.stages.items()}
    # every stage is scaled for the CPU default run (documented in the yml), keeping seed 001's order
    assert lrs["language"] > lrs["code"] >= lrs["tools"] > lrs["preference"]
    assert fine.stages["preference"].beta == 0.1
    assert fine.stages["tools"].loss_weights.cot_loss_weight == 1.5


def test_stage_list_must_match_the_dag(project_root):
    conf = _conf(project_root, "pretrain")
    with pytest.raises(ParameterError, match="stages must be exactly"):
        validate_group("pretrain", {"stages": {"language": conf["stages"]["language"]}}, PretrainParams)
    bad = {"stages": {**conf["stages"], "code": {**conf["stages"]["code"], "beta": 0.1}}}
    with pytest.raises(ParameterError, match=r"stages\.code: a causal_lm stage does not use: beta"):
        validate_group("pretrain", bad, PretrainParams)
    bad = {"stages": {**conf["stages"], "code": {**conf["stages"]["code"], "train": {"max_steps": 1, "lr": 1}}}}
    with pytest.raises(ParameterError, match=r"pretrain\.stages\.code\.train\.lr"):
        validate_group("pretrain", bad, PretrainParams)


def test_stages_are_namespaced_and_chained():
    from xoron_pipelines.pipelines.finetune import create_pipeline as finetune
    from xoron_pipelines.pipelines.pretrain import create_pipeline as pretrain

    pre, fine = pretrain(), finetune()
    assert {n.namespace for n in pre.nodes} == {"language", "code", None}
    inputs = {n.name: set(n.inputs) for n in pre.nodes + fine.nodes}
    assert "language.init_model" in inputs["language.train_language"]
    assert {"language.model", "params:pretrain.stages.code", "packed_train"} <= inputs["code.train_code"]
    assert {"code.model", "synth_raw", "params:finetune.stages.tools"} <= inputs["tools.train_tools"]
    assert "tools.model" in inputs["preference.train_preference"]
    # side outputs through the catalog: every stage's LoRA adapter, and its checkpoint store as an input
    assert pre.outputs() == {"code.model", "pretrain_summary", "language.lora_adapter", "code.lora_adapter"}
    assert {"language.checkpoints", "code.checkpoints"} <= set(pre.inputs())
    assert set(pre.only_nodes_with_namespaces(["code"]).inputs()) >= {"language.model"}


def test_data_mix_must_name_a_stage_mix_of_data_processing(project_root):
    from xoron_pipelines.validation import validate_all

    groups = {g: _conf(project_root, g) for g in ("data_processing", "pretrain", "finetune")}
    validated = validate_all(groups)
    assert {s.data_mix for s in validated["pretrain"].stages.values()} <= set(validated["data_processing"].stage_mixes)
    groups["pretrain"]["stages"]["code"]["data_mix"] = "kode"
    with pytest.raises(ParameterError, match=r"pretrain\.stages\.code\.data_mix: 'kode' is not one of data_processing"):
        validate_all(groups)
    groups["pretrain"]["stages"]["code"]["enabled"] = False  # a disabled stage reads no data
    validate_all(groups)
    tools = {**groups["finetune"]["stages"]["tools"], "data_mix": "code"}
    with pytest.raises(ParameterError, match="data_mix .causal_lm only"):
        validate_group("finetune", {"stages": {**groups["finetune"]["stages"], "tools": tools}}, FinetuneParams)
