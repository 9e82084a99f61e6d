"""``embedding_cache.engine.kind: ray``: the frozen encoder over a Ray Data actor pool.

The driver cuts a subset's rows into the same chunks as the local engine
(:func:`~xoron_pipelines.latent.cache_build.chunks`), one Ray Data row per chunk; ``map_batches``
hands each chunk to one actor of a fixed pool (``engine.num_workers`` actors, each loading the
encoder once; one GPU per actor when the cluster has GPUs, else one CPU), which runs
:func:`~xoron_pipelines.latent.cache_build.encode_chunk` -- the local engine's function, so the
batches inside a chunk, and the numbers, are the same -- and returns the chunk as an Arrow
table. The driver writes the chunks back in chunk order through the same
:class:`~xoron_pipelines.latent.cache.CacheWriter` s: shard boundaries, row order, values and the
offsets index are those of the local engine.

A killed actor is restarted and its chunk retried (``engine.max_retries`` times); the driver
checks that every chunk arrives exactly once with exactly its rows, so a retry can neither lose
nor duplicate a row.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xoron_pipelines.cluster import EngineSettings, ray_session
from xoron_pipelines.latent.cache import CacheWriter
from xoron_pipelines.latent.cache_build import (
    ACCOUNTING,
    Counts,
    Row,
    cache_schema,
    chunks,
    encode_chunk,
    fold_counts,
    load_encoder,
    row_split,
)
from xoron_pipelines.latent.encoder import directory_digest, resolve_encoder_dir

log = logging.getLogger(__name__)

# Arrow types of the per-row accounting columns (cos_* float64: the local engine's Python floats, exactly)
_ACCOUNTING_TYPES = dict(zip(ACCOUNTING, [pa.bool_(), pa.int64(), pa.int64(), pa.float64(), pa.int64(), pa.float64()]))


def encoder_key(p: Any) -> tuple:
    """Arguments of :func:`~xoron_pipelines.latent.cache_build.load_encoder` for ``p``."""
    digest = directory_digest(resolve_encoder_dir(p.encoder_model))
    return (p.encoder_model, p.max_seq_len, p.pooling, p.normalize, p.trust_remote_code, digest)


class ChunkEncoder:
    """The Ray Data actor: loads the encoder once (on the GPU Ray assigned it, else the CPU) and
    encodes one chunk per call into an Arrow table (chunk id, split, the cache columns of
    ``p``, the per-row accounting)."""

    def __init__(self, tokenizer: Any, p: Any) -> None:
        self.tokenizer, self.p = tokenizer, p
        self.encoder = load_encoder(*encoder_key(p))
        self.schema = cache_schema(p)

    def __call__(self, batch: pa.Table) -> pa.Table:
        (item,) = batch.to_pylist()  # batch_size=1: one chunk
        rows = [Row(i, s, t) for i, s, t in zip(item["index"], item["source"], item["target"])]
        cols = encode_chunk(rows, self.encoder, self.tokenizer, self.p)
        table = pa.Table.from_pydict({n: cols[n] for n in self.schema.names}, schema=self.schema)
        extra = {"chunk": pa.array([item["chunk"]] * len(rows), pa.int64()), "split": pa.array(item["split"])}
        extra |= {name: pa.array(cols[name], kind) for name, kind in _ACCOUNTING_TYPES.items()}
        for name, column in extra.items():
            table = table.append_column(name, column)
        return table


def _pool_resources(engine: EngineSettings) -> tuple[int, float]:
    """(actors, GPUs per actor): one GPU per actor when the cluster has GPUs, else CPU actors;
    ``engine.num_workers`` actors (at most the cluster's GPUs), else as many as the cluster has
    GPUs (CPUs)."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    workers = engine.num_workers or (gpus or max(1, int(resources.get("CPU", 1))))
    if gpus and workers > gpus:  # a fixed pool of GPU actors larger than the cluster would never start
        log.warning("embedding_cache: engine.num_workers %d > the cluster's %d GPUs: %d actors", workers, gpus, gpus)
        workers = gpus
    return workers, (1.0 if gpus else 0.0)


def encode_subset_ray(
    subset: str,
    good: list[Row],
    tokenizer: Any,
    p: Any,
    engine: EngineSettings,
    writers: dict[str, CacheWriter],
    counts: Counts,
    bar: Any,
) -> None:
    """Encode ``good`` on the Ray cluster of ``engine`` and write it through ``writers`` (in the
    local engine's order), folding the accounting into ``counts``."""
    import ray.data

    parts = chunks(good, p)
    if not parts:
        return
    items = [
        {
            "chunk": c,
            "index": [r.index for r in part],
            "source": [r.source for r in part],
            "target": [r.target for r in part],
            "split": [row_split(p, subset, r) for r in part],
        }
        for c, part in enumerate(parts)
    ]
    with ray_session(engine):
        ctx = ray.data.DataContext.get_current()
        saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
        try:
            workers, gpus = _pool_resources(engine)
            log.info("embedding_cache/%s: %d chunks on %d Ray actors (%g GPU each)", subset, len(parts), workers, gpus)
            encoded = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                ChunkEncoder,
                fn_constructor_kwargs={"tokenizer": tokenizer, "p": p},
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_gpus=gpus,
                num_cpus=0 if gpus else 1,
                # Ray Data restarts actors and retries their calls without bound by default; bound both
                # (passed as remote args, the only way in Ray 2.60; deprecated from 2.64)
                max_restarts=engine.max_retries,
                max_task_retries=engine.max_retries,
            )
            _write_in_order(encoded.iter_batches(batch_size=None, batch_format="pyarrow"), parts, writers, counts, bar)
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def _write_in_order(
    tables: Any, parts: list[list[Row]], writers: dict[str, CacheWriter], counts: Counts, bar: Any
) -> None:
    """Write the encoded chunks in chunk order (buffering any that arrive early); fails when a
    chunk arrives twice, with other rows than it was given, or not at all."""
    pending: dict[int, list[pa.Table]] = {}
    done = 0
    for table in tables:
        for c in pc.unique(table["chunk"]).to_pylist():
            if c < done:
                raise RuntimeError(f"embedding_cache: chunk {c} arrived again after it was written (duplicated rows)")
            pending.setdefault(c, []).append(table.filter(pc.equal(table["chunk"], c)))
        while done in pending and sum(t.num_rows for t in pending[done]) >= len(parts[done]):
            chunk = pa.concat_tables(pending.pop(done))
            if chunk["index"].to_pylist() != [r.index for r in parts[done]]:
                raise RuntimeError(f"embedding_cache: chunk {done} came back with other rows than it was given")
            fold_counts(counts, {n: chunk[n].to_pylist() for n in ("truncated", *_ACCOUNTING_TYPES)})
            for split, writer in writers.items():
                rows = chunk.filter(pc.equal(chunk["split"], split))
                if rows.num_rows:
                    writer.write_rows({n: rows.column(n) for n in writer.schema.names})
            bar.update(len(parts[done]))
            done += 1
    if done != len(parts) or pending:
        raise RuntimeError(f"embedding_cache: {len(parts) - done} of {len(parts)} chunks never came back from Ray")
