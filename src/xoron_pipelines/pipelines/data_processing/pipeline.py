"""``data_processing``: sources -> ledger -> quarantine/report, tokenizer, packed shards (+ stage mixes);
synth media + media sources -> media tables per modality, media quarantine + counts."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import (
    build_ledger,
    media_audio,
    media_image,
    media_quarantine,
    media_video,
    pack,
    report_records,
    train_tokenizer,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                build_ledger,
                inputs=["params:data_processing", "synth_raw"],
                outputs="record_ledger",
                name="build_record_ledger",
            ),
            Node(
                report_records,
                inputs="record_ledger",
                outputs=["quarantine", "data_processing_record_counts", "data_processing_record_metrics"],
                name="report_records",
            ),
            Node(
                train_tokenizer,
                inputs=["record_ledger", "params:data_processing"],
                outputs=["tokenizer", "data_processing_tokenizer_metrics"],
                name="train_tokenizer",
            ),
            Node(
                pack,
                inputs=["record_ledger", "tokenizer", "params:data_processing"],
                outputs=[
                    "packed_train",
                    "packed_val",
                    "packed_mixes",
                    "packing_manifest",
                    "data_processing_pack_metrics",
                ],
                name="tokenize_and_pack",
            ),
            *(
                Node(
                    fn,
                    inputs=["params:data_processing", f"synth_{fn.__name__}"],
                    outputs=[fn.__name__, f"media_report_{fn.__name__.removeprefix('media_')}"],
                    name=fn.__name__,
                    tags=["media"],
                )
                for fn in (media_image, media_video, media_audio)
            ),
            Node(
                media_quarantine,
                inputs=["media_report_image", "media_report_video", "media_report_audio"],
                outputs=["media_quarantine", "data_processing_media_counts", "data_processing_media_metrics"],
                name="media_quarantine",
                tags=["media"],
            ),
        ],
        tags=["data_processing", "data"],
    )
