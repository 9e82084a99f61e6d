"""``latent``: the latent-space model's four training stages, hand-off and generation examples.

Not part of the default ``kedro run``: run ``kedro run --pipeline latent`` after ``synth``,
``data_processing``, ``pretrain`` (the decoder) and ``embedding_cache``. The four stage nodes
always exist (a DAG cannot follow the configuration); ``pipeline_mode``, ``run_pretraining``,
``run_finetuning`` and ``training_phase`` make a stage pass its model through untrained.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from .nodes import build_latent_model, generate_examples, handoff, train_latent_stage
from .params import STAGES

#: per stage group: its cache and the input the cache was built from (raw texts joined by index)
_DATA = {"pretrain": ("latent_pretrain_cache", "latent_pretrain_text"), "finetune": ("latent_pair_cache", "synth_raw")}


def _stage_node(stage: str, previous: str) -> Node:
    func = update_wrapper(partial(train_latent_stage, stage=stage), train_latent_stage)
    cache, data = _DATA[stage.split("_")[0]]
    return Node(
        func,
        [previous, cache, data, "params:embedding_cache", "params:latent", f"latent_{stage}.checkpoints"],
        [f"latent_live_{stage}", f"latent_model_{stage}", f"latent_summary_{stage}"],
        name=f"latent_{stage}",
    )


def create_pipeline(**kwargs) -> Pipeline:
    nodes = [
        Node(
            build_latent_model,
            ["latent_decoder", "params:embedding_cache", "params:latent"],
            "latent_live_init",
            name="latent_build",
        )
    ]
    previous = "latent_live_init"
    for stage in STAGES:
        nodes.append(_stage_node(stage, previous))
        previous = f"latent_live_{stage}"
    nodes.append(
        Node(
            handoff,
            [previous, "params:latent", *[f"latent_summary_{s}" for s in STAGES]],
            ["latent_model", "latent_stage_summaries"],
            name="latent_handoff",
        )
    )
    nodes.append(
        Node(
            generate_examples,
            [previous, "latent_pair_cache", "synth_raw", "params:embedding_cache", "params:latent"],
            "latent_samples",
            name="latent_generate",
        )
    )
    return Pipeline(nodes, tags=["latent"])
