"""``synth`` pipeline: parameters -> one JSONL partition per synthetic type + a manifest."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import generate_synthetic


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_synthetic,
                inputs="params:synth",
                outputs=["synth_raw", "synth_manifest"],
                name="generate_synthetic",
                tags=["synth", "data"],
            )
        ]
    )
