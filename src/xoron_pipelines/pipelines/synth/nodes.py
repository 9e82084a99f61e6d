"""Node of the ``synth`` pipeline: generate every enabled synthetic type (the generators live in
the library package :mod:`xoron_pipelines.synth`)."""

from __future__ import annotations

import logging
from typing import Any

from xoron_pipelines.synth import generate_all, manifest

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
