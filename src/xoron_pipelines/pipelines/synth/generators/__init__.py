"""Synthetic example generators, one module per family of types.

Each generator is ``fn(rng: random.Random, difficulty: str) -> dict`` returning the
type-specific fields of one row (``messages`` or ``text`` or ``source``/``target`` or
``prompt``/``chosen``/``rejected``, plus ``metadata`` and optionally ``category``);
:mod:`..nodes` adds ``type``, ``category`` and ``difficulty``.
"""
