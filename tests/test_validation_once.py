"""Parameters are validated once per run, and nodes receive the validated objects."""

from __future__ import annotations

import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import run_pipeline
from xoron_pipelines.hooks import ParameterValidationHook
from xoron_pipelines.pipelines.synth import pipeline as synth_pipeline
from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES
from xoron_pipelines.pipelines.synth.params import Params as SynthParams
from xoron_pipelines.training.schema import StageParams
from xoron_pipelines.validation import validate_all


class _CountingValidator:
    """Stands in for a schema's pydantic validator; counts the validations of raw values
    (a value that already is an instance of the schema passes through without validation)."""

    def __init__(self, inner, schema) -> None:
        self.inner, self.schema, self.raw = inner, schema, 0

    def validate_python(self, value, *args, **kwargs):
        if not isinstance(value, self.schema):
            self.raw += 1
        return self.inner.validate_python(value, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_kedro_run_validates_once_and_the_node_gets_the_validated_object(kedro_project, monkeypatch):
    counter = _CountingValidator(SynthParams.__pydantic_validator__, SynthParams)
    monkeypatch.setattr(SynthParams, "__pydantic_validator__", counter)
    received = []
    node_func = synth_pipeline.generate_synthetic

    def spy(params):
        received.append(params)
        return node_func(params)

    monkeypatch.setattr(synth_pipeline, "generate_synthetic", spy)
    counts = {t: 0 for t in SYNTH_TYPES} | {"chat": 2}
    run_pipeline(kedro_project, "synth", {"synth.counts": counts, "synth.seed": 7})

    [params] = received
    assert isinstance(params, SynthParams) and params.seed == 7 and params.counts.chat == 2
    assert SynthParams.model_validate(params) is params  # the node's own model_validate: a pass-through
    assert counter.raw == 1  # the hook's, and no other

    # kedro-mlflow still logs the flat keys of the plain parameters
    uri = yaml.safe_load((kedro_project / "conf" / "local" / "mlflow.yml").read_text())["server"]["mlflow_tracking_uri"]
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("xoron_pipelines").experiment_id])
    assert run.data.params["synth.counts.chat"] == "2" and run.data.params["synth.seed"] == "7"


def test_nested_parameter_inputs_get_their_validated_sub_objects(project_root):
    conf = project_root / "conf" / "base"
    params = {
        g: yaml.safe_load((conf / f"parameters_{g}.yml").read_text())[g]
        for g in ("pretrain", "data_processing", "model")
    }
    hook = ParameterValidationHook()
    hook._validated = validate_all(params)
    inputs = {
        "params:pretrain.stages.language": params["pretrain"]["stages"]["language"],
        "params:model": params["model"],
        "params:model.preset": "nano",
        "params:unknown_group": {"a": 1},
        "tokenizer": object(),
    }
    out = hook.before_node_run(node=None, inputs=inputs)
    assert set(out) == {"params:pretrain.stages.language", "params:model", "params:model.preset"}
    stage = out["params:pretrain.stages.language"]
    assert isinstance(stage, StageParams) and stage == hook._validated["pretrain"].stages["language"]
    assert stage is not hook._validated["pretrain"].stages["language"]  # each node gets its own copy
    assert out["params:model.preset"] == params["model"]["preset"]
