"""Fixtures of the export tests."""

from __future__ import annotations

import pytest

from tests.export.export_helpers import build_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def trained(tokenizer):
    """{preset: a tiny model trained on a document and a conversation} (see train_tiny):
    nano exports natively (Llama), nano-learned in xoron format."""
    from tests.export.export_helpers import train_tiny

    return {preset: train_tiny(tokenizer, preset) for preset in ("nano", "nano-learned")}
