"""ablation.variants: one namespace per variant (names read from conf when the pipeline is built),
merged settings per variant, and bad variants refused before any node, naming the variant and key."""

from __future__ import annotations

import copy

import pytest
import yaml
from kedro.config import OmegaConfigLoader

from tests.helpers import PROJECT_ROOT, copy_project
from xoron_pipelines.pipelines.ablation.nodes import initialise_variant
from xoron_pipelines.pipelines.ablation.pipeline import configured_variants, create_pipeline
from xoron_pipelines.validation import ParameterError, validate_all

VARIANTS = [
    {"name": "ours"},
    {"name": "fewer_experts", "model": {"use_moe": True, "num_experts": 2, "num_experts_per_tok": 1}},
    {"name": "gpt2", "baseline": "gpt2", "train": {"learning_rate": 1.0e-3, "grad_clip": 0.5}},
    {"name": "code", "data_mix": "code"},
]


@pytest.fixture(scope="module")
def conf() -> dict:
    return OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="local")["parameters"]


def _with_variants(conf: dict, variants: list, **ablation) -> dict:
    out = copy.deepcopy(conf)
    out["ablation"].update(variants=variants, **ablation)
    return out


def test_each_variant_is_a_namespace_of_the_same_template_plus_one_comparison():
    names = [v["name"] for v in VARIANTS]
    pipe = create_pipeline(variants=names)
    nodes = {n.name for n in pipe.nodes}
    steps = ("initialise", "train", "evaluate")
    assert nodes == {f"ablation.{v}.{step}_{v}" for v in names for step in steps} | {"ablation.compare_ablation"}
    compare = next(n for n in pipe.nodes if n.name == "ablation.compare_ablation")
    assert compare.inputs == [f"ablation.{v}.result" for v in names]  # table order = variant order
    assert set(pipe.outputs()) == {"ablation_table", "ablation_table_md", "ablation_results", "ablation_loss_curves"}
    for v in names:  # each variant trains with its own checkpoint store on the shared data
        train = next(n for n in pipe.nodes if n.name == f"ablation.{v}.train_{v}")
        assert f"ablation.{v}.checkpoints" in train.inputs and "packed_train" in train.inputs
    assert create_pipeline(variants=[]).nodes == []


def test_the_names_come_from_conf_base_and_local(tmp_path):
    project = copy_project(tmp_path / "project")
    assert configured_variants(project) == ["xoron_nano", "gpt2_baseline"]  # the shipped example
    (project / "conf/local/parameters_ablation.yml").write_text(
        yaml.safe_dump({"ablation": {"variants": [{"name": "a"}, {"name": "b", "baseline": "gpt2"}]}})
    )
    assert configured_variants(project) == ["a", "b"]
    # an invalid or repeated name is left to parameter validation (which names it)
    (project / "conf/local/parameters_ablation.yml").write_text(
        yaml.safe_dump({"ablation": {"variants": [{"name": "a"}, {"name": "a"}, {"name": "b-c"}]}})
    )
    assert configured_variants(project) == ["a"]
    assert configured_variants(tmp_path / "not_a_project") == []


def test_the_merged_settings_of_each_variant(conf):
    params = validate_all(_with_variants(conf, VARIANTS))
    ablation, pretrain = params["ablation"], params["pretrain"]
    base = pretrain.stages["language"]
    ours = ablation.stage_params("ours", pretrain)
    assert ours.train.max_steps == conf["ablation"]["train"]["max_steps"] != base.train.max_steps  # ablation.train
    assert ours.train.batch_size == base.train.batch_size and ours.data_mix == base.data_mix == "language"
    gpt2 = ablation.stage_params("gpt2", pretrain)
    assert gpt2.train.learning_rate == 1.0e-3 and gpt2.train.max_grad_norm == 0.5  # a seed alias overrides too
    assert ablation.stage_params("code", pretrain).data_mix == "code"
    model = ablation.model_params("fewer_experts", params["model"]).build()
    assert model.use_moe and model.num_experts == 2
    assert not ablation.model_params("ours", params["model"]).build().use_moe


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ({"name": "few", "modle": {}}, "variant 'few': unknown key 'modle'"),
        ({"name": "few", "train": {"lerning_rate": 1.0}}, "variant 'few': train.lerning_rate: unknown key"),
        ({"name": "few", "train": {"max_steps": 2.5}}, "variant 'few': train.max_steps"),
        ({"name": "few", "model": {"num_expert": 2}}, "variants[1] (few): model.num_expert is not an XoronConfig"),
        ({"name": "few", "model": {"hidden_size": True}}, "variants[1] (few): model.hidden_size"),
        ({"name": "few", "data_mix": "nope"}, "variants[1] (few): data_mix 'nope' is not one of"),
        ({"name": "few", "train": {"warmup_steps": 10_000}}, "variants[1] (few): train: warmup_steps"),
        ({"name": "few", "baseline": "bert"}, "ablation.variants[1].baseline"),
        ({"name": "few-er"}, "variant name 'few-er' must match"),
        ({"name": "ours"}, "the name 'ours' is used twice"),
    ],
)
def test_bad_variants_are_refused_naming_the_variant_and_the_key(conf, variant, expected):
    with pytest.raises(ParameterError) as err:
        validate_all(_with_variants(conf, [{"name": "ours"}, variant]))
    assert expected in str(err.value) and "conf/base/parameters_ablation.yml" in str(err.value), str(err.value)


def test_a_variant_list_changed_after_the_pipeline_was_built_stops_the_run(conf):
    params = validate_all(_with_variants(conf, [{"name": "a"}, {"name": "b"}]))
    with pytest.raises(ValueError, match=r"differ from the variants this pipeline was built with \['a'\]"):
        initialise_variant(params["ablation"], params["pretrain"], params["model"], variant="a", built=("a",))
