"""The record ledger: one row per input record with its fate.

Every record read from every selected source lands in the ledger exactly once with
``status`` ``kept`` (clean text in ``text``), ``quarantined`` (bad input; ``reason``,
``detail`` and a ``raw`` snippet) or ``filtered`` (a cleaning / dedup decision; ``reason``).
A fault that takes a whole file (unreadable, corrupt Parquet footer) or Parquet row group with
it is one quarantined entry for that file (``row`` null) or row group (``row`` its first row
not read), so every input record is either in the ledger or inside such an entry.
So records in = kept + quarantined + filtered by construction, and the quarantine file, the
count table, the tokenizer corpus and the packed data are all derived from this one table.
The ledger is written in batches to Parquet shards; nothing is held beyond one batch plus the
dedup state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from xoron_pipelines.data import sources as src_mod
from xoron_pipelines.data.clean import EMPTY, clean_text, length_verdict
from xoron_pipelines.data.dedup import Deduplicator
from xoron_pipelines.datasets.parquet_shards import ShardSet, ShardWriter, staging_dir

log = logging.getLogger(__name__)

KEPT, QUARANTINED, FILTERED = "kept", "quarantined", "filtered"

LEDGER_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("category", pa.string()),
        ("modality", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
        ("text", pa.string()),
    ]
)


class BadRecordError(ValueError):
    """Raised on the first bad record when ``on_bad_record: fail``."""


def build_ledger(
    params,
    sources: Iterable | None = None,
    batch_rows: int = 2048,
    synth: Mapping[str, Callable[[], Any]] | None = None,
) -> ShardSet:
    """Ingest, clean and deduplicate every selected source into a staged ledger shard set;
    ``synth`` (the loaded ``synth_raw`` dataset: type -> load function) feeds the ``synth`` sources."""
    sources = list(params.selected_sources() if sources is None else sources)
    src_mod.check_source_paths(sources, synth)
    d = params.dedup
    dedup = Deduplicator(d.exact, d.near_dup, d.near_dup_threshold, d.num_perm, d.shingle_size)
    out_dir = staging_dir("xoron-ledger-")
    with ShardWriter(out_dir, LEDGER_SCHEMA, rows_per_shard=10_000) as writer:
        for source in sources:
            _ingest_source(source, params, dedup, writer, batch_rows, synth)
    return ShardSet(out_dir, staged=True)


def _ingest_source(
    source,
    params,
    dedup: Deduplicator,
    writer: ShardWriter,
    batch_rows: int,
    synth: Mapping[str, Callable[[], Any]] | None = None,
) -> None:
    c = params.cleaning
    cols: dict[str, list] = {name: [] for name in LEDGER_SCHEMA.names}
    counts = {KEPT: 0, QUARANTINED: 0, FILTERED: 0}

    def add(rec, status: str, reason: str | None, text: str | None) -> None:
        counts[status] += 1
        for name, value in ledger_values(source, rec, status, reason, text):
            cols[name].append(value)
        if len(cols["row"]) >= batch_rows:
            writer.write_rows(cols)
            for values in cols.values():
                values.clear()

    records = src_mod.iter_records(source, c.max_record_bytes, params.stdlib_corpus, synth)
    for rec in tqdm(records, desc=f"ingest {source.name}", unit="rec", disable=not params.progress, leave=False):
        if clean_record(rec, c):
            if params.on_bad_record == "fail":
                raise bad_record_error(source, rec)
            add(rec, QUARANTINED, rec.reason, None)
            continue
        reason = rec.reason or dedup.check(rec.text)
        if reason is not None:
            add(rec, FILTERED, reason, None)
            continue
        add(rec, KEPT, None, rec.text)
        if source.max_samples is not None and counts[KEPT] >= source.max_samples:
            break
    writer.write_rows(cols)
    log.info(
        "source %s: %d records in, %d kept, %d quarantined, %d filtered",
        source.name,
        sum(counts.values()),
        counts[KEPT],
        counts[QUARANTINED],
        counts[FILTERED],
    )


def clean_record(rec, cleaning) -> bool:
    """Clean one record in place (the per-record step of every engine): ``rec.text`` cleaned and
    ``rec.reason`` set to its length verdict when it was read well; True when the record is
    quarantined (``rec.reason`` in :data:`QUARANTINE_REASONS`), False when it goes on to the
    filters (``rec.reason`` a filter reason) or to dedup (``rec.reason`` None)."""
    c = cleaning
    if rec.reason is None:
        rec.text = clean_text(rec.text, c.normalization, c.strip_control)
        rec.reason = length_verdict(rec.text, c.min_chars, c.max_chars)
        if rec.reason == EMPTY:
            rec.raw = src_mod.snippet(rec.text)
            rec.detail = "no text left after cleaning"
    return rec.reason is not None and rec.reason in QUARANTINE_REASONS


def bad_record_error(source, rec) -> BadRecordError:
    """The error of ``on_bad_record: fail`` for a quarantined record of ``source``."""
    where = src_mod.printable(rec.file) + ("" if rec.row is None else f":{rec.row}")
    return BadRecordError(f"bad record in source {source.name!r} at {where}: {rec.reason} ({rec.detail})")


def ledger_values(source, rec, status: str, reason: str | None, text: str | None) -> tuple[tuple[str, Any], ...]:
    """``(column, value)`` of one ledger row (LEDGER_SCHEMA order). file, detail and raw may hold
    anything (undecodable file names, lone surrogates): printable() makes them writable; a kept
    text is clean (clean_text drops surrogates)."""
    return (
        ("source", source.name),
        ("category", source.category),
        ("modality", source.modality),
        ("file", src_mod.printable(rec.file)),
        ("row", rec.row),
        ("status", status),
        ("reason", reason or ""),
        ("detail", src_mod.printable(rec.detail)),
        ("raw", src_mod.printable(rec.raw) if status == QUARANTINED else None),
        ("text", text),
    )


QUARANTINE_REASONS = frozenset(
    {
        src_mod.MALFORMED_JSON,
        src_mod.INVALID_UTF8,
        src_mod.NOT_AN_OBJECT,
        src_mod.MISSING_FIELD,
        src_mod.NON_STRING_TEXT,
        src_mod.TEMPLATE_ERROR,
        src_mod.BAD_MESSAGES,
        src_mod.OVERSIZED,
        src_mod.RECORD_ERROR,
        src_mod.UNREADABLE_FILE,
        src_mod.CORRUPT_ROW_GROUP,
        EMPTY,
    }
)
