"""Fixtures of the export tests."""

from __future__ import annotations

import pytest

from tests.export.export_helpers import build_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()
