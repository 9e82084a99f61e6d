"""Perplexity and bits-per-byte.

Both come from the summed negative log-likelihood (nats) of the scored tokens:

* ``perplexity = exp(total_nll / scored_tokens)``
* ``bits_per_byte = total_nll / (ln 2 * bytes)`` where ``bytes`` is the UTF-8 size of the text
  behind the scored tokens (lm-evaluation-harness ``bits_per_byte``), which makes models with
  different tokenizers comparable.

Two inputs:

* packed rows (the held-out ``packed_val`` split): each row's first token has no context and is
  not scored; the bytes are those of the decoded scored tokens (``tokens[1:length]``, special
  tokens such as bos / eos decode to no bytes but their prediction is still scored);
* plain texts: each text is prefixed with bos (when the tokenizer has one), so every text token
  is scored, and the bytes are exactly ``len(text.encode("utf-8"))``. Texts longer than
  ``max_length`` are scored in windows of ``max_length`` model inputs that each predict
  ``max_length`` new tokens, the last window right-aligned (it re-reads earlier tokens as context
  and scores only the new ones): lm-evaluation-harness ``loglikelihood_rolling``, so our figures
  and the harness's agree on the same text (``tests/evaluation/test_harness.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from xoron_pipelines.evaluation.lm import batched, token_logprobs


@dataclass
class PerplexityResult:
    nll: float = 0.0  # summed negative log-likelihood, nats
    tokens: int = 0  # scored tokens
    bytes: int = 0  # UTF-8 bytes of the text behind the scored tokens
    sequences: int = 0
    # per scored sequence (the items a bootstrap interval resamples): nll, tokens, bytes
    items: dict[str, list[float]] = field(default_factory=lambda: {"nll": [], "tokens": [], "bytes": []})

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes) if self.bytes else float("nan")

    def as_dict(self) -> dict[str, float]:
        """The totals and the two figures (without the per-sequence ``items``)."""
        totals = {"nll": self.nll, "tokens": self.tokens, "bytes": self.bytes, "sequences": self.sequences}
        return {**totals, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}

    def uniform_chance(self, vocab_size: int) -> dict[str, float]:
        """The figures of a model that gives every one of ``vocab_size`` ids the same probability."""
        nll = math.log(vocab_size) * self.tokens
        return {
            "perplexity": float(vocab_size),
            "bits_per_byte": nll / (math.log(2) * self.bytes) if self.bytes else float("nan"),
        }


def score(
    model,
    pieces: Iterable[tuple[Sequence[int], int] | tuple[Sequence[int], int, int]],
    batch_size: int,
    pad_id: int = 0,
    progress: bool = False,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Sum the NLL of ``(token_ids, n_bytes[, n_context])`` pieces: every token after the first
    ``1 + n_context`` (default 0) is scored."""
    result = PerplexityResult()
    for batch in tqdm(batched(pieces, batch_size), desc=desc, disable=not progress):
        scored = [(p[0], p[1], p[2] if len(p) > 2 else 0) for p in batch if len(p[0]) >= 2]
        if not scored:
            continue
        for logp, (ids, n_bytes, context) in zip(token_logprobs(model, [p[0] for p in scored], pad_id), scored):
            nll = -float(logp[context:].sum())
            result.nll += nll
            result.tokens += len(ids) - 1 - context
            result.bytes += n_bytes
            result.sequences += 1
            for key, value in (("nll", nll), ("tokens", len(ids) - 1 - context), ("bytes", n_bytes)):
                result.items[key].append(float(value))
    return result


def packed_pieces(rows: Iterable[tuple[Sequence[int], int]], tokenizer) -> Iterator[tuple[list[int], int]]:
    """``(input_ids, length)`` packed rows -> ``(real ids, bytes of ids[1:length])``."""
    for ids, length in rows:
        real = list(ids[:length])
        text = tokenizer.decode(real[1:], skip_special_tokens=True)
        yield real, len(text.encode("utf-8"))


def text_pieces(
    texts: Iterable[str], tokenizer, max_length: int, add_bos: bool = True
) -> Iterator[tuple[list[int], int, int]]:
    """Texts -> ``(window ids, bytes, context)``: windows of at most ``max_length + 1`` ids (the
    model reads all but the last) scoring up to ``max_length`` new tokens; the last window is
    right-aligned and its first ``context`` predictions are not scored (they were already). The
    first window of a text carries all its bytes (bytes are only ever summed)."""
    if max_length < 1:
        raise ValueError("max_length must be >= 1")
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    for text in texts:
        ids = bos + tokenizer.encode(text, add_special_tokens=False)
        n_bytes = len(text.encode("utf-8"))
        done = 1  # ids[:done] are predicted (or are the first, unscored, id)
        while done < len(ids):
            stop = min(done + max_length, len(ids))
            start = max(0, stop - max_length - 1)
            yield ids[start:stop], n_bytes if done == 1 else 0, done - 1 - start
            done = stop


def iter_packed_rows(shards, max_rows: int | None = None) -> Iterator[tuple[list[int], int]]:
    """``(input_ids, length)`` of the first ``max_rows`` rows of a packed ``ShardSet``."""
    seen = 0
    for batch in shards.dataset().to_batches(columns=["input_ids", "length"]):
        for ids, length in zip(batch.column("input_ids").to_pylist(), batch.column("length").to_pylist()):
            if max_rows is not None and seen >= max_rows:
                return
            seen += 1
            yield ids, int(length)
