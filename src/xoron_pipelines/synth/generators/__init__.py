"""Synthetic example generators, one module per family of types.

Each generator is ``fn(rng: random.Random, difficulty: str) -> dict`` returning the
type-specific fields of one row (``messages`` or ``text`` or ``source``/``target`` or
``prompt``/``chosen``/``rejected``, plus ``metadata`` and optionally ``category``);
:func:`xoron_pipelines.synth.generate_type` adds ``type``, ``category`` and ``difficulty``.
"""
