"""Exact (content hash) and near-duplicate (MinHash LSH, ``datasketch``) detection.

The first occurrence of a document is kept; later copies are reported as ``exact_duplicate``
or ``near_duplicate``. Memory grows with the number of *kept* documents only (a 16-byte digest
each, plus the LSH band keys when near-dup is on), never with their text.
"""

from __future__ import annotations

import hashlib
import re
import zlib

from datasketch import MinHash, MinHashLSH

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"

_WORD_RE = re.compile(r"\w+")


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


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
        self._hashes: set[bytes] = set()
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if near_dup else None
        self._count = 0

    def check(self, text: str) -> str | None:
        if self.exact:
            digest = content_hash(text)
            if digest in self._hashes:
                return EXACT_DUPLICATE
        if self._lsh is not None:
            sig = minhash(text, self.num_perm, self.shingle_size)
            if self._lsh.query(sig):
                return NEAR_DUPLICATE
            self._lsh.insert(self._count, sig, check_duplication=False)
        if self.exact:
            self._hashes.add(digest)
        self._count += 1
        return None
