"""Text cleaning: Unicode normalisation, control-character stripping, length filters."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters except tab, newline and carriage return.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Lone surrogates (from "\ud800"-style JSON escapes) cannot be written as UTF-8: always removed.
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")

EMPTY = "empty"  # quarantine reason: nothing left after cleaning
TOO_SHORT = "too_short"  # filter reasons
TOO_LONG = "too_long"


def clean_text(text: str, normalization: str = "NFC", strip_control: bool = True) -> str:
    """Normalise ``text`` (``normalization`` one of NFC/NFKC/NFD/NFKD/none), drop control
    characters (keeping \\t \\n) and unify line endings to \\n when ``strip_control``; lone
    surrogates are always removed."""
    text = _SURROGATE_RE.sub("", text)
    if strip_control:
        text = _CONTROL_RE.sub("", text.replace("\r\n", "\n"))
    if normalization != "none":
        text = unicodedata.normalize(normalization, text)
    return text


def length_verdict(text: str, min_chars: int, max_chars: int) -> str | None:
    """``empty`` (quarantine), ``too_short`` / ``too_long`` (filtered), or None when it passes."""
    if not text.strip():
        return EMPTY
    if len(text) < min_chars:
        return TOO_SHORT
    if len(text) > max_chars:
        return TOO_LONG
    return None
