"""Exact (content hash) and near-duplicate (MinHash + LSH banding) detection.

The first occurrence of a document is kept; later copies are reported as ``exact_duplicate``
or ``near_duplicate``. MinHash signatures come from ``datasketch``; the LSH index is a set of
64-bit band keys (bands and rows chosen by ``datasketch``'s optimiser for the threshold), so
memory grows by a few small ints per *kept* document and never with their text. A document is
a near-duplicate when any of its bands matches a kept document's band (the LSH candidate
rule of ``datasketch.MinHashLSH``).
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"

_WORD_RE = re.compile(r"\w+")


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def content_hash(text: str) -> int:
    """64-bit content hash (blake2b) of the UTF-8 text."""
    return _hash64(text.encode("utf-8"))


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[int]:
    """One 64-bit key per LSH band of a MinHash signature (band index mixed in)."""
    return [_hash64(bytes([b % 256, b // 256]) + signature[b * rows : (b + 1) * rows].tobytes()) for b in range(bands)]


def shingles(text: str, size: int) -> set[bytes]:
    """Lower-cased word ``size``-grams (the whole text as one shingle when it is shorter)."""
    words = _WORD_RE.findall(text.lower())
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


def minhash(text: str, num_perm: int, shingle_size: int, seed: int = 1) -> MinHash:
    """MinHash signature of the text's shingles (crc32 hashing: fast and deterministic)."""
    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
    m.update_batch(list(shingles(text, shingle_size)))
    return m


class Deduplicator:
    """Stateful filter: :meth:`check` returns a duplicate reason, or None and remembers the text."""

    def __init__(
        self,
        exact: bool = True,
        near_dup: bool = True,
        threshold: float = 0.85,
        num_perm: int = 64,
        shingle_size: int = 5,
    ) -> None:
        self.exact = exact
        self.near_dup = near_dup
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.bands, self.rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
        self._hashes: set[int] = set()
        self._band_keys: set[int] = set()

    def lsh_keys(self, text: str) -> list[int]:
        """The text's LSH band keys (what :meth:`check` compares; any shared key = near-duplicate)."""
        return band_keys(minhash(text, self.num_perm, self.shingle_size).hashvalues, self.bands, self.rows)

    def check(self, text: str) -> str | None:
        digest = content_hash(text) if self.exact else None
        if digest is not None and digest in self._hashes:
            return EXACT_DUPLICATE
        if self.near_dup:
            keys = self.lsh_keys(text)
            if any(k in self._band_keys for k in keys):
                return NEAR_DUPLICATE
            self._band_keys.update(keys)
        if digest is not None:
            self._hashes.add(digest)
        return None
