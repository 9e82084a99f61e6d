"""Cleaning (normalisation, control characters, length filters) and dedup knobs."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from dp_helpers import jsonl_source, make_params, prose_docs, write_jsonl

from xoron_pipelines.data.clean import clean_text, length_verdict
from xoron_pipelines.data.dedup import Deduplicator, minhash, shingles
from xoron_pipelines.data.ledger import build_ledger

NO_DEDUP = {"exact": False, "near_dup": False}


@pytest.mark.parametrize("form", ["NFC", "NFKC", "NFD", "NFKD"])
def test_normalization_forms(form):
    text = "Cafe\u0301 \ufb01le \u2460"  # combining accent, 'fi' ligature, circled one
    assert clean_text(text, form, strip_control=False) == unicodedata.normalize(form, text)
    assert clean_text(text, "none", strip_control=False) == text


def test_control_characters():
    text = "a\x00b\x07c\r\nd\te\x9ff\ud800g"
    assert clean_text(text, "none", strip_control=True) == "abc\nd\tefg"
    # off: control characters stay; lone surrogates always go (they cannot be stored as UTF-8)
    assert clean_text(text, "none", strip_control=False) == "a\x00b\x07c\r\nd\te\x9ffg"


def test_length_verdicts():
    assert length_verdict(" \n ", 0, 10) == "empty"
    assert length_verdict("abc", 4, 10) == "too_short"
    assert length_verdict("abcdefghijk", 4, 10) == "too_long"
    assert length_verdict("abcdef", 4, 10) is None


def test_cleaning_params_take_effect_in_ledger(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"text": "Cafe\u0301 \x07ok text here"}, {"text": "tiny"}, {"text": "y" * 500}],
    )

    def rows(**cleaning):
        p = make_params([jsonl_source(path)], cleaning=cleaning, dedup=NO_DEDUP)
        return [(r["status"], r["reason"], r["text"]) for r in build_ledger(p).read().to_pylist()]

    assert rows(min_chars=5, max_chars=100) == [
        ("kept", "", "Caf\u00e9 ok text here"),
        ("filtered", "too_short", None),
        ("filtered", "too_long", None),
    ]
    assert rows(min_chars=1, max_chars=1000, normalization="NFD", strip_control=False)[:2] == [
        ("kept", "", "Cafe\u0301 \x07ok text here"),
        ("kept", "", "tiny"),
    ]
    # max_record_bytes: the raw line is quarantined as oversized instead of filtered
    assert rows(min_chars=1, max_chars=100, max_record_bytes=200)[2] == ("quarantined", "oversized", None)


def test_exact_and_near_dup_in_ledger(tmp_path: Path):
    base = prose_docs(3, seed=11)
    near = base[0].replace("Document 0:", "Document zero:")  # one word differs
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in [base[0], base[1], base[0], near, base[2]]])

    def reasons(**dedup):
        p = make_params([jsonl_source(path)], dedup=dedup)
        return [r["reason"] for r in build_ledger(p).read().to_pylist()]

    assert reasons(exact=True, near_dup=True) == ["", "", "exact_duplicate", "near_duplicate", ""]
    assert reasons(exact=True, near_dup=False) == ["", "", "exact_duplicate", "", ""]
    assert reasons(exact=False, near_dup=False) == ["", "", "", "", ""]
    # without exact dedup the copy is still caught as a near-duplicate (similarity 1)
    assert reasons(exact=False, near_dup=True) == ["", "", "near_duplicate", "near_duplicate", ""]


def test_near_dup_threshold_and_shingles():
    words = [f"w{i}" for i in range(200)]
    a = " ".join(words)
    b = " ".join(w if i % 10 else "x" for i, w in enumerate(words))  # 10% of words replaced
    jaccard = len(shingles(a, 5) & shingles(b, 5)) / len(shingles(a, 5) | shingles(b, 5))
    assert 0.3 < jaccard < 0.7

    def dup(threshold, shingle_size=5, num_perm=128):
        d = Deduplicator(exact=False, near_dup=True, threshold=threshold, num_perm=num_perm, shingle_size=shingle_size)
        assert d.check(a) is None
        return d.check(b)

    assert dup(0.2) == "near_duplicate"
    assert dup(0.9) is None
    # 1-word shingles: 90% of words shared -> similar enough at 0.7; 5-word shingles are not
    assert dup(0.7, shingle_size=1) == "near_duplicate"
    assert dup(0.7, shingle_size=5) is None
    assert len(minhash(a, 32, 5).hashvalues) == 32 and len(minhash(a, 96, 5).hashvalues) == 96
