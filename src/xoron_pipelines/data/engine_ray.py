"""The ``data_processing`` stages on Ray Data (``data_processing.engine.kind: ray``).

Same records, ledger, quarantine reasons, counts and packed rows as the local path
(:mod:`xoron_pipelines.data.ledger`, :mod:`xoron_pipelines.data.packing`); only where the work runs
changes. Called inside :func:`xoron_pipelines.cluster.ray_session`.

Ledger (:func:`build_ledger`):

1. **Sharded read + clean** (``map_batches`` over shard specs, one task per shard): a shard is one
   file of a file-based source (``jsonl`` / ``json`` / ``csv`` / ``parquet`` / ``text``), read by
   the same reader as the local path (:func:`sources.iter_file`, so bad lines get the same
   quarantine reasons), or a whole ``hf`` / ``stdlib`` source, or the rows of a ``synth`` source
   (read on the driver through the catalog). Each record is cleaned (:func:`ledger.clean_record`)
   and, when it passes, fingerprinted: content hash and MinHash LSH band keys
   (:class:`dedup.Deduplicator`). Every record carries its global order
   ``(source, shard, position)``: the order the local path reads it in.
2. **Candidates by hash partitioning**: each passing record is exploded to ``(kind, key)`` rows
   (its content hash; one key per LSH band), grouped by key (a hash shuffle across workers, bands
   partitioned like any key); only groups of two or more records leave the workers.
3. **Resolution** (driver, over the candidates only): the local rule applied in the global order:
   a record is an ``exact_duplicate`` when an earlier *kept* record has its hash, else a
   ``near_duplicate`` when an earlier *kept* record shares one of its band keys (datasketch's
   LSH candidate rule), else kept. Records in no multi-record group are kept without being looked
   at. This is the local greedy pass restricted to the records it could ever drop, so the kept set
   is exactly the local one (not a connected-component approximation: A~B, B~C, A!~C keeps A and
   C, as the local path does). ``max_samples`` cuts a source after its n-th kept record, as the
   local path stops reading there.
4. **Write**: the driver streams the records in global order into the ledger's Parquet shards
   (same schema and shard size as the local path), applying the resolution.

Packing (:func:`tokenize_ledger`): each ledger shard's kept texts are tokenized on a worker
(``encode_batch_fast``); the driver mixes, splits (document-level, seeded, unchanged) and packs
the pre-tokenized documents with the local packers, so the packed rows are the local ones.

A worker lost mid-task (killed, out of memory) is retried (``engine.max_retries``); a shard's
records are emitted by the retried task only, so none is lost or duplicated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xoron_pipelines.data import sources as src_mod
from xoron_pipelines.data.dedup import EXACT_DUPLICATE, NEAR_DUPLICATE, Deduplicator, content_hash
from xoron_pipelines.data.ledger import (
    FILTERED,
    KEPT,
    LEDGER_SCHEMA,
    QUARANTINED,
    bad_record_error,
    clean_record,
    ledger_values,
)
from xoron_pipelines.data.packing import Doc
from xoron_pipelines.datasets.parquet_shards import ShardSet, ShardWriter, staging_dir

log = logging.getLogger(__name__)

ORDER = ["_src", "_shard", "_seq"]
_EXACT, _BAND = 0, 1  # kinds of dedup keys
_WORK_SCHEMA = pa.schema(
    list(LEDGER_SCHEMA)
    + [
        ("_src", pa.int32()),
        ("_shard", pa.int32()),
        ("_seq", pa.int64()),
        ("_pass", pa.bool_()),
        ("_hash", pa.uint64()),
        ("_bands", pa.list_(pa.uint64())),
    ]
)
_KEY_SCHEMA = pa.schema(
    [("_kind", pa.int8()), ("_key", pa.uint64()), *[(c, _WORK_SCHEMA.field(c).type) for c in ORDER]]
)
TOKENIZED_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("num_chars", pa.int64()),
        ("ids", pa.list_(pa.int32())),
    ]
)


def _task_args(settings) -> dict[str, Any]:
    """``map_batches`` options of every stage: retries of lost tasks, parallelism cap."""
    args: dict[str, Any] = {"max_retries": settings.max_retries}
    if settings.num_workers is not None:
        args["concurrency"] = settings.num_workers
    return args


def _context(progress: bool) -> None:
    """Blocks come back in input order (the ledger's record order is the local one); the dedup
    ``groupby`` uses the sort-based shuffle (plain tasks: on a 1-2 CPU instance it was 4x faster
    than the hash shuffle's aggregator actors, benchmarks/RESULTS.md)."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    ctx.enable_progress_bars = progress


def plan_shards(params, synth: Mapping[str, Callable[[], Any]] | None = None) -> list[tuple[int, str, Any]]:
    """``(source index, kind, payload)`` per shard, in the local path's reading order: ``file``
    (a path), ``source`` (a whole hf / stdlib source, read in one task) or ``records`` (RawRecords
    made on the driver: unlisted directories, the rows of a synth source)."""
    plan: list[tuple[int, str, Any]] = []
    for i, source in enumerate(params.selected_sources()):
        if source.format in src_mod.FILE_FORMATS:
            listing, files = src_mod.file_shards(source)
            if listing:
                plan.append((i, "records", listing))
            plan.extend((i, "file", path) for path in files)
        elif source.format == "synth":
            records = list(src_mod.iter_records(source, params.cleaning.max_record_bytes, params.stdlib_corpus, synth))
            plan.append((i, "records", records))
        else:
            plan.append((i, "source", None))
    return plan


def _read_shards(batch: dict[str, np.ndarray], params, plan, batch_rows: int, hook=None) -> Iterator[pa.Table]:
    """Worker: read, clean and fingerprint the records of the shards in ``batch``."""
    sources = params.selected_sources()
    c, d = params.cleaning, params.dedup
    dedup = Deduplicator(d.exact, d.near_dup, d.near_dup_threshold, d.num_perm, d.shingle_size)
    for shard in batch["shard"].tolist():
        i, kind, payload = plan[shard]
        source = sources[i]
        if kind == "file":
            records = src_mod.iter_file(source, payload, c.max_record_bytes)
        elif kind == "source":
            records = src_mod.iter_records(source, c.max_record_bytes, params.stdlib_corpus)
        else:
            records = iter(payload)
        cols: dict[str, list] = {name: [] for name in _WORK_SCHEMA.names}
        for seq, rec in enumerate(records):
            if hook is not None:
                hook(rec)
            if clean_record(rec, c):
                status, reason, text = QUARANTINED, rec.reason, None
            elif rec.reason is not None:
                status, reason, text = FILTERED, rec.reason, None
            else:
                status, reason, text = KEPT, None, rec.text  # tentative: dedup is resolved later
            for name, value in ledger_values(source, rec, status, reason, text):
                cols[name].append(value)
            passes = status == KEPT
            cols["_src"].append(i)
            cols["_shard"].append(shard)
            cols["_seq"].append(seq)
            cols["_pass"].append(passes)
            cols["_hash"].append(content_hash(text) if passes and d.exact else 0)
            cols["_bands"].append(dedup.lsh_keys(text) if passes and d.near_dup else [])
            if len(cols["_seq"]) >= batch_rows:
                yield pa.Table.from_pydict(cols, schema=_WORK_SCHEMA)
                cols = {name: [] for name in _WORK_SCHEMA.names}
        if cols["_seq"]:
            yield pa.Table.from_pydict(cols, schema=_WORK_SCHEMA)


def _dedup_keys(batch: pa.Table, exact: bool) -> pa.Table:
    """Worker: one ``(kind, key, order)`` row per content hash / band key of each passing record."""
    batch = batch.filter(pc.field("_pass"))
    parts = []
    if batch.num_rows:
        order = [batch.column(c) for c in ORDER]
        hashes = batch.column("_hash")
        if exact:
            parts.append(pa.table([pa.array(np.zeros(batch.num_rows, np.int8)), hashes, *order], schema=_KEY_SCHEMA))
        bands = batch.column("_bands").combine_chunks()
        if len(bands.values):
            idx = pc.list_parent_indices(bands)
            taken = [pc.take(col, idx) for col in order]
            kinds = pa.array(np.ones(len(idx), np.int8))
            parts.append(pa.table([kinds, bands.values, *taken], schema=_KEY_SCHEMA))
    return pa.concat_tables(parts) if parts else _KEY_SCHEMA.empty_table()


def _shared_keys(group: pa.Table) -> pa.Table:
    """Worker: the rows of a key group shared by two or more records (the dedup candidates)."""
    return group if group.num_rows > 1 else group.slice(0, 0)


def resolve_duplicates(
    candidates: Mapping[tuple, tuple[int | None, set[int]]],
    capped: Mapping[int, list[tuple]],
    max_samples: Mapping[int, int],
) -> tuple[dict[tuple, str], dict[int, tuple]]:
    """The local dedup rule over the candidates in global order (see module doc): returns
    ``{order: duplicate reason}`` and ``{source index: order of its last record}`` for the sources
    cut by ``max_samples`` (``capped``: the orders of all their passing records)."""
    nodes = sorted(set(candidates) | {o for orders in capped.values() for o in orders})
    kept_hashes: set[int] = set()
    kept_bands: set[int] = set()
    kept: dict[int, int] = {}
    fates: dict[tuple, str] = {}
    cutoff: dict[int, tuple] = {}
    for order in nodes:
        src = order[0]
        if src in cutoff:
            continue
        digest, bands = candidates.get(order, (None, set()))
        if digest is not None and digest in kept_hashes:
            fates[order] = EXACT_DUPLICATE
            continue
        if bands & kept_bands:
            fates[order] = NEAR_DUPLICATE
            continue
        kept_bands |= bands
        if digest is not None:
            kept_hashes.add(digest)
        kept[src] = kept.get(src, 0) + 1
        if src in max_samples and kept[src] >= max_samples[src]:
            cutoff[src] = order
    return fates, cutoff


def build_ledger(
    params,
    settings,
    synth: Mapping[str, Callable[[], Any]] | None = None,
    batch_rows: int = 2048,
    hook: Callable[[Any], None] | None = None,
) -> ShardSet:
    """The ledger of :func:`xoron_pipelines.data.ledger.build_ledger`, computed on Ray Data.
    ``hook`` (tests) is called on every raw record in the workers."""
    import ray
    import ray.data

    _context(params.progress)
    sources = list(params.selected_sources())
    src_mod.check_source_paths(sources, synth)
    plan = plan_shards(params, synth)
    task = _task_args(settings)
    started = time.perf_counter()
    shards = ray.data.from_items([{"shard": k} for k in range(len(plan))], override_num_blocks=max(len(plan), 1))
    records = shards.map_batches(
        _read_shards,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"params": params, "plan": plan, "batch_rows": batch_rows, "hook": hook},
        **task,
    ).materialize()
    t_read = time.perf_counter() - started

    candidates: dict[tuple, tuple[int | None, set[int]]] = {}
    if params.dedup.exact or params.dedup.near_dup:
        keys = records.map_batches(_dedup_keys, batch_format="pyarrow", fn_kwargs={"exact": params.dedup.exact}, **task)
        partitions = settings.num_workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        shared = keys.groupby(["_kind", "_key"], num_partitions=partitions).map_groups(
            _shared_keys, batch_format="pyarrow"
        )
        for batch in shared.iter_batches(batch_format="pyarrow"):
            for kind, key, *order in zip(*(batch.column(c).to_pylist() for c in _KEY_SCHEMA.names)):
                digest, bands = candidates.setdefault(tuple(order), (None, set()))
                if kind == _EXACT:
                    candidates[tuple(order)] = (key, bands)
                else:
                    bands.add(key)
    max_samples = {i: s.max_samples for i, s in enumerate(sources) if s.max_samples is not None}
    capped: dict[int, list[tuple]] = {i: [] for i in max_samples}
    if max_samples:
        flt = pc.field("_pass") & pc.field("_src").isin(list(max_samples))
        for batch in records.iter_batches(batch_format="pyarrow"):
            batch = batch.filter(flt)
            for order in zip(*(batch.column(c).to_pylist() for c in ORDER)):
                capped[order[0]].append(order)
    fates, cutoff = resolve_duplicates(candidates, capped, max_samples)
    t_dedup = time.perf_counter() - started - t_read
    ledger = _write_ledger(records, sources, params, fates, cutoff)
    log.info(
        "ray ledger: %d shards, %d dedup candidates, %d duplicates; read+clean %.1fs, dedup %.1fs, write %.1fs",
        len(plan),
        len(candidates),
        len(fates),
        t_read,
        t_dedup,
        time.perf_counter() - started - t_read - t_dedup,
    )
    return ledger


def _write_ledger(records, sources, params, fates: dict[tuple, str], cutoff: dict[int, tuple]) -> ShardSet:
    """Stream the records in global order into the ledger's shards, applying the dedup fates and
    ``max_samples`` cuts; ``on_bad_record: fail`` raises on the first quarantined record."""
    out_dir = staging_dir("xoron-ledger-")
    last: tuple | None = None
    with ShardWriter(out_dir, LEDGER_SCHEMA, rows_per_shard=10_000) as writer:
        for batch in records.iter_batches(batch_format="pyarrow", batch_size=None):
            orders = list(zip(*(batch.column(c).to_pylist() for c in ORDER)))
            if not orders:
                continue
            if last is not None and orders[0] <= last:
                raise RuntimeError(f"ray ledger: records out of order ({orders[0]} after {last})")
            last = orders[-1]
            status = batch.column("status").to_pylist()
            reason = batch.column("reason").to_pylist()
            keep = [not (o[0] in cutoff and o > cutoff[o[0]]) for o in orders]
            changed = not all(keep)
            for k, o in enumerate(orders):
                if o in fates:
                    status[k], reason[k], changed = FILTERED, fates[o], True
            if params.on_bad_record == "fail" and QUARANTINED in status:
                k = next(k for k, (s, kp) in enumerate(zip(status, keep)) if s == QUARANTINED and kp)
                row = batch.slice(k, 1).to_pylist()[0]
                rec = src_mod.RawRecord(file=row["file"], row=row["row"], reason=row["reason"], detail=row["detail"])
                raise bad_record_error(sources[orders[k][0]], rec)
            table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
            table = table.select(LEDGER_SCHEMA.names)
            if changed:
                text = [t if s == KEPT else None for t, s in zip(table.column("text").to_pylist(), status)]
                table = table.set_column(
                    LEDGER_SCHEMA.get_field_index("status"), "status", pa.array(status, pa.string())
                )
                table = table.set_column(
                    LEDGER_SCHEMA.get_field_index("reason"), "reason", pa.array(reason, pa.string())
                )
                table = table.set_column(LEDGER_SCHEMA.get_field_index("text"), "text", pa.array(text, pa.string()))
                table = table.filter(pa.array(keep))
            writer.write(table.cast(LEDGER_SCHEMA))
    return ShardSet(out_dir, staged=True)


def _tokenize_shard(batch: dict[str, np.ndarray], tok, batch_size: int) -> Iterator[pa.Table]:
    """Worker: the kept texts of one ledger shard, tokenized (no special tokens)."""
    import pyarrow.parquet as pq

    for path in batch["path"].tolist():
        table = pq.read_table(path, columns=["source", "status", "file", "row", "text"])
        table = table.filter(pc.field("status") == KEPT)
        for start in range(0, table.num_rows, batch_size):
            part = table.slice(start, batch_size)
            texts = part.column("text").to_pylist()
            encoded = tok.encode_batch_fast(texts, add_special_tokens=False)
            ids = pa.array([e.ids for e in encoded], pa.list_(pa.int32()))
            chars = pa.array([len(t) for t in texts], pa.int64())
            yield pa.table(
                [part.column("source"), part.column("file"), part.column("row"), chars, ids], schema=TOKENIZED_SCHEMA
            )


def tokenize_ledger(ledger: ShardSet, hf_tokenizer, params, settings) -> ShardSet:
    """Every kept document of the ledger tokenized on the workers, one task per ledger shard,
    written (in ledger order) to a staged shard set read by :func:`tokenized_docs`."""
    import ray.data

    _context(params.progress)
    files = [str(f) for f in ledger.files]
    out_dir = staging_dir("xoron-tokenized-")
    with ShardWriter(out_dir, TOKENIZED_SCHEMA, rows_per_shard=100_000) as writer:
        if files:
            ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)).map_batches(
                _tokenize_shard,
                batch_size=1,
                batch_format="numpy",
                fn_kwargs={"tok": hf_tokenizer.backend_tokenizer, "batch_size": params.packing.preprocess_batch_size},
                **_task_args(settings),
            )
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                writer.write(batch)
    return ShardSet(out_dir, staged=True)


def tokenized_docs(tokenized: ShardSet, ledger: ShardSet, name: str, tok, batch_size: int) -> Iterator[Doc]:
    """The ``docs`` of :func:`packing.tokenize_and_pack` from :func:`tokenize_ledger`'s output (the
    same documents, in the same order, as :func:`packing.source_docs`)."""
    flt = pc.field("source") == name
    for batch in tokenized.iter_batches(columns=["file", "row", "num_chars", "ids"], filter=flt, batch_size=batch_size):
        ids = batch.column("ids")
        offsets = ids.offsets.to_numpy()
        values = ids.values.to_numpy()
        files, rows, chars = (batch.column(c).to_pylist() for c in ("file", "row", "num_chars"))
        for k, (f, r, n) in enumerate(zip(files, rows, chars)):
            yield Doc(f, r, n, values[offsets[k] : offsets[k + 1]])


def docs_of(tokenized: ShardSet) -> Callable[..., Iterator[Doc]]:
    """:func:`tokenized_docs` bound to one tokenized shard set."""
    return partial(tokenized_docs, tokenized)
