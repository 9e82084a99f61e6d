"""Shared inputs of the embedding_cache tests."""

TEXTS = [
    "Alice: Can we meet on Monday?\nBob: Sure, at noon at the cafe.",
    "The quick brown fox jumps over the lazy dog.",
    "Short one.",
    "Carol reports that the app crashes on start; Dan will ship a fix tomorrow morning.",
]
