"""Dataset categories and modality groups (seed 000)."""

from __future__ import annotations

import pytest

from xoron_pipelines.categories import (
    CATEGORY_TO_MODALITY,
    DATASET_CATEGORIES,
    MODALITY_GROUPS,
    categories_for,
    filter_by,
)

SEED_CATEGORIES = {
    "code",
    "conversation",
    "tool_use",
    "agentic",
    "chain_of_thought",
    "anti_hallucination",
    "document",
    "fim",
    "git_operations",
    "code_execution",
    "vision",
    "video",
    "generation",
    "video_generation",
    "voice_asr",
    "voice_tts",
}


def test_categories_and_modalities():
    assert set(DATASET_CATEGORIES) == SEED_CATEGORIES and len(DATASET_CATEGORIES) == 16
    assert MODALITY_GROUPS["image"] == ("vision", "generation")
    assert MODALITY_GROUPS["video"] == ("video", "video_generation")
    assert MODALITY_GROUPS["audio"] == ("voice_asr", "voice_tts")
    assert CATEGORY_TO_MODALITY["code"] == "text" and CATEGORY_TO_MODALITY["voice_asr"] == "audio"
    assert sorted(c for g in MODALITY_GROUPS.values() for c in g) == sorted(SEED_CATEGORIES)


def test_selection_and_filtering():
    assert categories_for(["audio"]) == ["voice_asr", "voice_tts"]
    assert categories_for(["text", "video"], ["fim", "video", "vision"]) == ["fim", "video"]
    assert categories_for(None, None) == list(DATASET_CATEGORIES)
    assert categories_for(["all"]) == list(DATASET_CATEGORIES)
    rows = [{"category": "fim", "i": 0}, {"category": "vision", "i": 1}, {"category": "voice_tts", "i": 2}]
    assert [r["i"] for r in filter_by(rows, modalities=["image", "audio"])] == [1, 2]
    assert [r["i"] for r in filter_by(rows, categories=["fim"])] == [0]


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown modalities \\['smell'\\]"):
        categories_for(["smell"])
    with pytest.raises(ValueError, match="unknown categories \\['poetry'\\]"):
        categories_for(None, ["poetry"])
