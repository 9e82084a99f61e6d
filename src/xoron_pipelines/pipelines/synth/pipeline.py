"""``synth`` pipeline: parameters -> one JSONL partition per synthetic type + a manifest; one
Parquet media table per modality (rendered scenes, clips, spoken phrases)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import generate_synthetic, synth_media_audio, synth_media_image, synth_media_video


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_synthetic,
                inputs="params:synth",
                outputs=["synth_raw", "synth_manifest"],
                name="generate_synthetic",
                tags=["synth", "data"],
            ),
            *(
                Node(fn, inputs="params:synth", outputs=fn.__name__, name=fn.__name__, tags=["synth", "data", "media"])
                for fn in (synth_media_image, synth_media_video, synth_media_audio)
            ),
        ]
    )
