"""The one modular stage pipeline, instantiated per stage under the stage's namespace.

:func:`stage_pipeline` builds the template of one stage of kind ``causal_lm`` (packed shards),
``sft`` (chat conversations) or ``dpo`` (preference pairs) and wraps it with
``pipeline(..., namespace=stage)``: kedro viz shows one collapsible box per stage, ``kedro run
--namespaces <stage>`` selects stages, and the template's datasets become ``<stage>.model``,
``<stage>.train_summary`` and ``<stage>.lora_adapter`` (outputs) and ``<stage>.checkpoints`` (the
checkpoint store the stage writes into while it trains and resumes from). The starting model comes from ``init_from``: the previous stage's
``<prev>.model``, or ``None`` for a freshly initialised model of ``params:model`` (an
``initialise_<stage>`` node inside the namespace). ``params:stage`` is mapped to
``params:<group>.stages.<stage>``. Node names carry their stage (``train_<stage>``, full name
``<stage>.train_<stage>``), so kedro viz and the logs never show two boxes called "train"; every
node is tagged with its group (``pretrain`` / ``finetune``) and ``training``.

Why the stage list lives in code (:data:`~xoron_pipelines.training.schema.STAGES`): a Kedro pipeline is built before the
configuration is loaded (``create_pipeline`` receives no parameters), so the DAG cannot follow a
list read from ``parameters_*.yml``. The schema of each group requires exactly these stages,
and ``enabled: false`` skips one (its model passes through unchanged).

Data inputs (:data:`DATA_INPUTS`): a causal_lm stage reads the packed shards (or, with
``token_files``, seed 001's .npy files, which its node opens from the parameters); an sft / dpo
stage reads the synth partitions it names from ``synth_raw`` and the user datasets of its
``sources`` itself, from the parameters (:mod:`xoron_pipelines.training.user_data` says why: the
DAG cannot grow one catalog entry per user file), identified by content in the fingerprint.

``create_pipeline`` of this package gives ``pretrain + finetune`` (``kedro run --pipeline
training``: all four stages).
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline, pipeline

from xoron_pipelines.training.schema import STAGES, Kind

from .nodes import initialise_model, summarise_stages, train_causal_lm, train_dpo, train_sft

#: the data inputs of each kind (shared, un-namespaced datasets)
DATA_INPUTS: dict[str, list[str]] = {
    "causal_lm": ["packed_train", "packed_val", "packed_mixes"],
    "sft": ["synth_raw"],
    "dpo": ["synth_raw"],
}

_TRAIN = {"causal_lm": train_causal_lm, "sft": train_sft, "dpo": train_dpo}


def _for_stage(func, stage: str, **kwargs):
    """``func`` with ``stage=`` (and ``kwargs``) bound, keeping its name for kedro viz."""
    return update_wrapper(partial(func, stage=stage, **kwargs), func)


def stage_pipeline(kind: Kind, stage: str, group: str, init_from: str | None) -> Pipeline:
    """Stage ``stage`` of kind ``kind`` under namespace ``stage`` (see the module doc)."""
    data = DATA_INPUTS[kind]
    nodes = [
        Node(
            _for_stage(_TRAIN[kind], stage, with_adapter=True),
            ["init_model", "tokenizer", *data, "params:stage", "checkpoints"],
            ["model", "train_summary", "lora_adapter"],
            name=f"train_{stage}",
        )
    ]
    inputs = {"tokenizer": "tokenizer", **{d: d for d in data}}
    parameters = {"params:stage": f"params:{group}.stages.{stage}"}
    if init_from is None:
        nodes.insert(
            0, Node(initialise_model, ["params:model", "params:stage"], "init_model", name=f"initialise_{stage}")
        )
        parameters["params:model"] = "params:model"
    else:
        inputs["init_model"] = init_from
    return pipeline(Pipeline(nodes), namespace=stage, inputs=inputs, parameters=parameters)


def group_pipeline(group: str, init_from: str | None) -> Pipeline:
    """All stages of ``group`` chained (each starts from the previous one's model) plus a summary."""
    stages, previous = [], init_from
    for stage, kind in STAGES[group].items():
        stages.append(stage_pipeline(kind, stage, group, previous))
        previous = f"{stage}.model"
    summary = Node(
        summarise_stages, [f"{s}.train_summary" for s in STAGES[group]], f"{group}_summary", name=f"summarise_{group}"
    )
    return Pipeline([*stages, summary], tags=[group, "training"])


def last_model(group: str) -> str:
    """The dataset name of the final model of ``group``."""
    return f"{list(STAGES[group])[-1]}.model"


def create_pipeline(**kwargs) -> Pipeline:
    return group_pipeline("pretrain", None) + group_pipeline("finetune", last_model("pretrain"))
