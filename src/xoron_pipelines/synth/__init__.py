"""Synthetic-data library: seeded, deterministic generators of every synthetic type.

:data:`SYNTH_TYPES` lists the types in generation order; :func:`generate_all` builds the
enabled ones as partitions ``{type: rows}``; :func:`generate_type` one type (the random stream
depends only on ``(seed, type)``); :func:`manifest` counts a corpus. The ``synth`` pipeline
(:mod:`xoron_pipelines.pipelines.synth`) is a thin Kedro node around :func:`generate_all`; the
offline evaluation tasks reuse the generators.
"""

from xoron_pipelines.synth.generate import (
    GENERATORS,
    SANDBOXED_TYPES,
    SYNTH_TYPES,
    generate_all,
    generate_type,
    manifest,
)

__all__ = ["GENERATORS", "SANDBOXED_TYPES", "SYNTH_TYPES", "generate_all", "generate_type", "manifest"]
