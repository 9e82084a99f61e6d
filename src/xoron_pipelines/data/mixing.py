"""Weighted interleaving of sources by token share.

Each source has a ``weight`` (its target share of the mixed tokens, after normalising the
weights to sum to 1). At every step the mixer takes the next document from the source that is
furthest behind its target, i.e. with the smallest ``tokens_emitted / weight`` (ties go to the
earlier source). The achieved share therefore tracks the target to within one document at every
point of the stream, and the result is deterministic.

A source *finishes* when it has been read ``sample_repeat`` times in full, or when it has
emitted ``max_per_epoch`` documents. Stopping rule (``stopping_strategy``):

* ``first_exhausted``: stop as soon as any source finishes (no source is over-sampled).
* ``all_exhausted``: stop when every source has finished; a source that finished by its passes
  keeps cycling (a new pass from its start) so the weights still hold; a source capped by
  ``max_per_epoch`` drops out.

``max_total_docs`` (the global ``max_per_epoch``) stops the mix after that many documents.
A source with no documents at all is dropped with a warning instead of ending the mix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class MixSource:
    """A source as the mixer sees it. ``open()`` starts a fresh pass over its documents; each
    document must have a ``num_tokens`` attribute."""

    name: str
    weight: float
    open: Callable[[], Iterator[Any]]
    sample_repeat: int = 1
    max_per_epoch: int | None = None
    tokens: int = 0
    documents: int = 0
    passes: int = 0
    finished: bool = False
    dropped: bool = False
    _iter: Iterator[Any] | None = field(default=None, repr=False)
    _next: Any = field(default=None, repr=False)


class WeightedMixer:
    """Iterate ``(source_index, document)`` in weighted-interleave order (see module doc)."""

    def __init__(
        self,
        sources: list[MixSource],
        stopping_strategy: str = "all_exhausted",
        max_total_docs: int | None = None,
    ) -> None:
        if stopping_strategy not in ("first_exhausted", "all_exhausted"):
            raise ValueError(f"unknown stopping_strategy {stopping_strategy!r}")
        self.sources = sources
        self.stopping_strategy = stopping_strategy
        self.max_total_docs = max_total_docs
        total = sum(s.weight for s in sources)
        self.targets = [s.weight / total for s in sources]

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        active = []
        for i, s in enumerate(self.sources):
            s._iter = s.open()
            s._next = next(s._iter, None)  # one document of lookahead: a pass ends exactly
            if s._next is None:
                log.warning("mix: source %s has no documents; it is left out of the mix", s.name)
                s.dropped = True
            else:
                active.append(i)
        emitted = 0
        while active:
            i = min(active, key=lambda k: (self.sources[k].tokens / self.sources[k].weight, k))
            s = self.sources[i]
            doc = s._next
            yield i, doc
            s.tokens += doc.num_tokens
            s.documents += 1
            emitted += 1
            if self.max_total_docs is not None and emitted >= self.max_total_docs:
                return
            if s.max_per_epoch is not None and s.documents >= s.max_per_epoch:
                s.finished = True
                active.remove(i)
                if self._should_stop():
                    return
                continue
            s._next = next(s._iter, None)
            if s._next is None:  # end of a pass
                s.passes += 1
                if s.passes >= s.sample_repeat and not s.finished:
                    s.finished = True
                    if self._should_stop():
                        return
                s._iter = s.open()
                s._next = next(s._iter, None)

    def _should_stop(self) -> bool:
        live = [s for s in self.sources if not s.dropped]
        if self.stopping_strategy == "first_exhausted":
            return any(s.finished for s in live)
        return all(s.finished for s in live)

    def report(self) -> dict[str, dict[str, float]]:
        """Target vs achieved token share per source, with documents, tokens and passes."""
        total = sum(s.tokens for s in self.sources) or 1
        return {
            s.name: {
                "target_share": self.targets[k],
                "achieved_share": s.tokens / total,
                "tokens": s.tokens,
                "documents": s.documents,
                "passes_completed": s.passes,
                "finished": s.finished,
            }
            for k, s in enumerate(self.sources)
        }
