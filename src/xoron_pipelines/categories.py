"""Dataset categories and modality groups (Xoron-Dev dataset configuration).

Every training example carries a ``category`` from :data:`DATASET_CATEGORIES`; each category
belongs to exactly one modality of :data:`MODALITY_GROUPS`. The data pipeline filters sources
by category or modality with :func:`categories_for` / :func:`filter_by`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

MODALITY_GROUPS: dict[str, tuple[str, ...]] = {
    "text": (
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
    ),
    "image": ("vision", "generation"),
    "video": ("video", "video_generation"),
    "audio": ("voice_asr", "voice_tts"),
}

#: All categories, in the documented order (text capabilities, reasoning, agentic coding, multimodal).
DATASET_CATEGORIES: tuple[str, ...] = (
    *MODALITY_GROUPS["text"],
    "vision",
    "video",
    "generation",
    "video_generation",
    "voice_asr",
    "voice_tts",
)

CATEGORY_TO_MODALITY: dict[str, str] = {
    category: modality for modality, categories in MODALITY_GROUPS.items() for category in categories
}

MODALITIES: tuple[str, ...] = tuple(MODALITY_GROUPS)

assert set(CATEGORY_TO_MODALITY) == set(DATASET_CATEGORIES), "every category needs exactly one modality"
assert len(CATEGORY_TO_MODALITY) == sum(map(len, MODALITY_GROUPS.values())), "a category is in two modalities"


def categories_for(modalities: Iterable[str] | None = None, categories: Iterable[str] | None = None) -> list[str]:
    """Categories selected by a modality list and/or a category list (intersection when both).

    ``None`` means "no restriction"; ``"all"`` in either list also means no restriction.
    Unknown names raise ``ValueError`` listing the valid ones.
    """
    selected = list(DATASET_CATEGORIES)
    if modalities is not None and "all" not in modalities:
        modalities = list(modalities)
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected some of {list(MODALITIES)}")
        selected = [c for c in selected if CATEGORY_TO_MODALITY[c] in modalities]
    if categories is not None and "all" not in categories:
        categories = list(categories)
        unknown = sorted(set(categories) - set(DATASET_CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; expected some of {list(DATASET_CATEGORIES)}")
        selected = [c for c in selected if c in categories]
    return selected


T = TypeVar("T", bound=Mapping[str, Any])


def filter_by(
    items: Iterable[T],
    modalities: Iterable[str] | None = None,
    categories: Iterable[str] | None = None,
    key: str = "category",
) -> list[T]:
    """Keep the items (dataset configs or rows) whose ``item[key]`` is a selected category."""
    keep = set(categories_for(modalities, categories))
    return [item for item in items if item.get(key) in keep]


__all__ = [
    "CATEGORY_TO_MODALITY",
    "DATASET_CATEGORIES",
    "MODALITIES",
    "MODALITY_GROUPS",
    "categories_for",
    "filter_by",
]
