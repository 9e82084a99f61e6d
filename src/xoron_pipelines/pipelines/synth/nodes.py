"""Nodes of the ``synth`` pipeline: generate every enabled synthetic type, and the procedural media
corpus (the generators live in the library package :mod:`xoron_pipelines.synth`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from xoron_pipelines.datasets.media_table import empty_table
from xoron_pipelines.synth import generate_all, manifest
from xoron_pipelines.synth.media import corpus

from .params import Params

log = logging.getLogger(__name__)


def generate_synthetic(params: Any) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """All enabled types (count > 0) as partitions ``{type: rows}``, plus their manifest."""
    p = Params.model_validate(params)
    partitions = generate_all(
        p.counts.as_dict(), p.seed, p.difficulty.normalised(), allow_weak_isolation=p.sandbox.allow_weak_isolation
    )
    report = manifest(partitions, p.seed)
    log.info("synth: %d rows over %d types (seed %d)", report["total"], len(partitions), p.seed)
    return partitions, report


def _table(rows: list[dict[str, Any]], modality: str, report: dict[str, int]) -> pd.DataFrame:
    df = pd.DataFrame(rows) if rows else empty_table()
    by_split = df["split"].value_counts().to_dict() if len(df) else {}
    log.info("synth media %s: %s %s", modality, by_split, report)
    return df


def synth_media_image(params: Any) -> pd.DataFrame:
    """Rendered scenes, train + held-out rows (held-out never pixel-equal to a training scene)."""
    m = Params.model_validate(params).media
    rows, report = corpus.image_records(m.image.counts.as_dict(), tuple(m.image.size), m.seed, m.progress)
    return _table(rows, "image", report)


def synth_media_video(params: Any) -> pd.DataFrame:
    """Clips of a moving object, train + held-out rows (held-out never pixel-equal to a training clip)."""
    m = Params.model_validate(params).media
    v = m.video
    rows, report = corpus.video_records(v.counts.as_dict(), tuple(v.size), v.frames, m.seed, m.progress)
    return _table(rows, "video", report)


def synth_media_audio(params: Any) -> pd.DataFrame:
    """Spoken phrases, train + held-out rows (held-out speakers are not training speakers)."""
    m = Params.model_validate(params).media
    a = m.audio
    rows, report = corpus.audio_records(
        a.counts.as_dict(), a.speakers.as_dict(), a.max_words, m.seed, progress=m.progress
    )
    return _table(rows, "audio", report)
