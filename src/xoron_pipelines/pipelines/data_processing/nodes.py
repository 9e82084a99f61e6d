"""Nodes of the ``data_processing`` pipeline: thin wrappers over :mod:`xoron_pipelines.data`.

Large data moves between nodes as lazy :class:`ShardSet` handles (Parquet shards), never as
Python lists of the whole corpus.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from kedro.io import DatasetError

from xoron_pipelines.cluster import ray_session
from xoron_pipelines.data import engine_ray, media_sources, packing, tokenizer_training
from xoron_pipelines.data import ledger as ledger_mod
from xoron_pipelines.datasets.generation import generation_of
from xoron_pipelines.datasets.parquet_shards import ShardSet, iter_rows

from .params import Params

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["source", "file", "row", "reason", "detail", "raw"]


def build_ledger(params: Any, synth_raw: Mapping[str, Callable[[], Any]] | None = None) -> ShardSet:
    """Ingest, clean and deduplicate every selected source into the record ledger.

    ``synth_raw`` is the synth pipeline's output as the catalog loads it (type -> load function,
    read lazily): the rows of the ``format: synth`` sources, and only of them: with none
    selected it may be empty (synth has not run). Synth sources without any synth output raise
    ``DatasetError`` (run synth first); a missing source path or synth partition fails here,
    naming the source, before any record is read."""
    p = Params.model_validate(params)
    log.info("data_processing sources: %s", [s.name for s in p.selected_sources()])
    needs_synth = [s.name for s in p.selected_sources() if s.format == "synth"]
    if needs_synth and not synth_raw:  # synth has not run (the catalog entry loads empty then)
        error = getattr(synth_raw, "error", None)
        raise DatasetError(
            f"synth_raw: the selected sources {needs_synth} read the synth pipeline's output, which does "
            f"not exist yet; run `kedro run --pipeline synth` first, or leave them out of data_processing.sources"
        ) from (error.__cause__ if error is not None else None)
    if p.engine.kind == "ray":
        with ray_session(p.engine):
            return engine_ray.build_ledger(p, p.engine, synth=synth_raw)
    return ledger_mod.build_ledger(p, synth=synth_raw)


def count_records(ledger: ShardSet) -> pd.DataFrame:
    """``source, status, reason, count`` for every combination present in the ledger."""
    counts: Counter = Counter()
    for batch in ledger.iter_batches(columns=["source", "status", "reason"], batch_size=65536):
        grouped = pa.Table.from_batches([batch]).group_by(["source", "status", "reason"]).aggregate([([], "count_all")])
        for row in grouped.to_pylist():
            counts[(row["source"], row["status"], row["reason"])] += row["count_all"]
    rows = [{"source": s, "status": st, "reason": r, "count": n} for (s, st, r), n in sorted(counts.items())]
    return pd.DataFrame(rows, columns=["source", "status", "reason", "count"])


def quarantine_rows(ledger: ShardSet) -> Iterator[dict[str, Any]]:
    """Quarantined records (source, file, row, reason, detail, raw snippet), streamed."""
    flt = pc.field("status") == ledger_mod.QUARANTINED
    return iter_rows(ledger.iter_batches(columns=QUARANTINE_COLUMNS, filter=flt))


def record_metrics(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """MLflow metrics: records in / kept / quarantined / filtered, and per reason."""
    metrics: dict[str, float] = {"records.in": float(table["count"].sum())}
    for status in (ledger_mod.KEPT, ledger_mod.QUARANTINED, ledger_mod.FILTERED):
        metrics[f"records.{status}"] = float(table.loc[table.status == status, "count"].sum())
    for (status, reason), n in table[table.reason != ""].groupby(["status", "reason"])["count"].sum().items():
        metrics[f"{status}.{reason}"] = float(n)
    for source, n in table[table.status == ledger_mod.KEPT].groupby("source")["count"].sum().items():
        metrics[f"kept_by_source.{source}"] = float(n)
    return {k: {"value": v, "step": 0} for k, v in metrics.items()}


def report_records(ledger: ShardSet) -> tuple[Iterator[dict[str, Any]], pd.DataFrame, dict]:
    """Quarantine file, per-reason count table and MLflow metrics, all from the ledger."""
    table = count_records(ledger)
    totals = table.groupby("status")["count"].sum().to_dict()
    log.info("records: %s; by reason:\n%s", totals, table[table.reason != ""].to_string(index=False))
    return quarantine_rows(ledger), table, record_metrics(table)


def kept_texts(ledger: ShardSet) -> Iterator[str]:
    """Texts of the kept records, in ledger order."""
    flt = pc.field("status") == ledger_mod.KEPT
    for batch in ledger.iter_batches(columns=["text"], filter=flt):
        yield from batch.column("text").to_pylist()


def train_tokenizer(ledger: ShardSet, params: dict[str, Any]) -> tuple[Any, dict]:
    """Train the byte-level BPE tokenizer on the cleaned corpus (kept records), or take the
    existing one of ``tokenizer_name`` with the registry's special tokens added (their count is
    the metric ``tokenizer.added_special_tokens``)."""
    p = Params.model_validate(params)
    if p.tokenizer_name is not None:
        hf, added = tokenizer_training.load_existing(p.tokenizer_name, model_max_length=p.packing.max_seq_len)
        stats = {**tokenizer_training.stats(hf), "added_special_tokens": float(len(added))}
        log.info("tokenizer %s (not trained): %s; special tokens added: %s", p.tokenizer_name, stats, added)
        return hf, {f"tokenizer.{k}": {"value": v, "step": 0} for k, v in stats.items()}
    t = p.tokenizer
    n_docs = ledger.dataset().count_rows(filter=pc.field("status") == ledger_mod.KEPT)
    tok = tokenizer_training.train_bpe(
        tokenizer_training.capped(kept_texts(ledger), t.max_train_chars),
        vocab_size=t.vocab_size,
        min_frequency=t.min_frequency,
        show_progress=p.progress,
        length=n_docs,
    )
    hf = tokenizer_training.wrap(tok, model_max_length=p.packing.max_seq_len)
    stats = tokenizer_training.stats(hf)
    log.info("tokenizer: %s", stats)
    return hf, {f"tokenizer.{k}": {"value": v, "step": 0} for k, v in stats.items()}


def pack(ledger: ShardSet, tokenizer: Any, params: dict[str, Any]) -> tuple[ShardSet, ShardSet, dict, dict, dict]:
    """Tokenize, mix, split and pack; returns train / val shards, the stage mixes
    (``{mix: {"train", "val"}}``, one packing per ``stage_mixes`` entry), manifest and MLflow metrics.

    Every output carries the tokenizer's data generation (shard sets: ``.generation``, written as
    ``_generation.json`` when published; manifest: ``generation``), so training can tell whether the
    tokenizer and the packed data belong together. The manifest is the node's last output: once it
    names a generation, the shards of that generation are in place."""
    p = Params.model_validate(params)
    if p.engine.kind == "ray":  # tokenized on the workers, shard by shard; mixed and packed here
        with ray_session(p.engine):
            docs = engine_ray.docs_of(engine_ray.tokenize_ledger(ledger, tokenizer, p, p.engine))
    else:
        docs = packing.source_docs
    generation = generation_of(tokenizer)
    cache: dict = {}  # tokenized passes of small sources, shared by all packings
    train, val, manifest = packing.tokenize_and_pack(ledger, tokenizer, p, cache=cache, docs=docs)
    metrics = _pack_metrics("", manifest)
    metrics["tokenizer.chars_per_token"] = manifest["chars_per_token"]
    metrics["pack.tokens_per_second"] = manifest["tokens_per_second"]
    manifest["generation"] = train.generation = val.generation = generation
    mixes: dict[str, dict[str, ShardSet]] = {}
    manifest["stage_mixes"] = {}
    for name, (weights, fallback) in p.stage_mix_weights().items():
        if fallback:
            log.warning(
                "stage mix %s names none of the selected sources %s: it packs all of them at their own "
                "weight (set data_processing.stage_mixes.%s to choose)",
                name,
                sorted(weights),
                name,
            )
        mix_train, mix_val, mix_manifest = packing.tokenize_and_pack(
            ledger, tokenizer, p, weights=weights, cache=cache, desc=f"pack mix {name}", docs=docs
        )
        mix_train.generation = mix_val.generation = generation
        mixes[name] = {"train": mix_train, "val": mix_val}
        manifest["stage_mixes"][name] = {k: mix_manifest[k] for k in ("splits", "sources")}
        manifest["stage_mixes"][name]["fallback"] = fallback
        metrics.update(_pack_metrics(f"stage_mix.{name}.", mix_manifest))
        log.info("stage mix %s: %s", name, mix_manifest["splits"])
    return train, val, mixes, manifest, {k: {"value": v, "step": 0} for k, v in metrics.items()}


def _pack_metrics(prefix: str, manifest: dict) -> dict[str, float]:
    """Split counts and target vs achieved share per source of one packing."""
    metrics: dict[str, float] = {}
    for split, summary in manifest["splits"].items():
        for key, value in summary.items():
            metrics[f"{prefix}pack.{split}.{key}"] = float(value)
    for name, row in manifest["sources"].items():
        metrics[f"{prefix}mix.{name}.target_share"] = row["target_share"]
        metrics[f"{prefix}mix.{name}.achieved_share"] = row["achieved_share"]
    return metrics


# ---------------------------------------------------------------- media
def _media(modality: str, params: Any, synth: pd.DataFrame | None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The media table of ``modality`` (synth rows + the media sources, each item decoded once to
    validate it; a modality that ``modalities`` / ``categories`` leave out gets no synth rows) and
    its report ``{"quarantined", "counts"}`` for :func:`media_quarantine`."""
    p = Params.model_validate(params)
    sources = [s for s in p.media_sources() if s.modality == modality]
    media_sources.check_paths(sources)
    synth = synth if p.wants_modality(modality) else None
    tables = media_sources.collect(modality, synth, sources, p.media, progress=p.progress)
    by_split = tables.kept["split"].value_counts().to_dict() if len(tables.kept) else {}
    log.info("media %s: kept %s, quarantined %d", modality, by_split, len(tables.quarantined))
    if p.on_bad_record == "fail" and len(tables.quarantined):
        first = tables.quarantined.iloc[0]
        raise ValueError(
            f"media {modality}: source {first['source']!r}, item {first['origin']}: {first['reason']} "
            f"({first['detail']}); on_bad_record is fail"
        )
    return tables.kept, {"quarantined": tables.quarantined, "counts": tables.counts}


def media_image(params: Any, synth_media_image: pd.DataFrame | None) -> tuple[pd.DataFrame, dict]:
    """Images: synth scenes + image sources -> media_image (PNG), report."""
    return _media("image", params, synth_media_image)


def media_video(params: Any, synth_media_video: pd.DataFrame | None) -> tuple[pd.DataFrame, dict]:
    """Videos: synth clips + video sources -> media_video (NPY uint8 T,H,W,3), report."""
    return _media("video", params, synth_media_video)


def media_audio(params: Any, synth_media_audio: pd.DataFrame | None) -> tuple[pd.DataFrame, dict]:
    """Audio: synth phrases + audio sources -> media_audio (WAV PCM16 mono 16 kHz), report."""
    return _media("audio", params, synth_media_audio)


def media_quarantine(*reports: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The refused media items of every modality (with reason, detail, origin), the count table
    (modality, source, split, status, reason, count; in = kept + quarantined) and MLflow metrics:
    ``media.<modality>.{in,kept,quarantined}``, ``media.<modality>.<split>.kept``,
    ``media.quarantined.<reason>`` and ``media.kept_by_source.<modality>.<source>``."""
    from xoron_pipelines.datasets.media_table import empty_table

    refused = [r["quarantined"] for r in reports if len(r["quarantined"])]
    quarantine = pd.concat(refused, ignore_index=True) if refused else empty_table(media_sources.QUARANTINE_EXTRA)
    counts = pd.concat([r["counts"] for r in reports], ignore_index=True)
    metrics: dict[str, float] = {}
    for modality in ("image", "video", "audio"):
        rows = counts[counts.modality == modality]
        kept = rows[rows.status == "kept"]
        metrics[f"media.{modality}.in"] = float(rows["count"].sum())
        metrics[f"media.{modality}.kept"] = float(kept["count"].sum())
        metrics[f"media.{modality}.quarantined"] = float(rows.loc[rows.status == "quarantined", "count"].sum())
        for split in ("train", "heldout"):
            metrics[f"media.{modality}.{split}.kept"] = float(kept.loc[kept.split == split, "count"].sum())
        for source, n in kept.groupby("source")["count"].sum().items():
            metrics[f"media.kept_by_source.{modality}.{source}"] = float(n)
    for reason, n in counts[counts.status == "quarantined"].groupby("reason")["count"].sum().items():
        metrics[f"media.quarantined.{reason}"] = float(n)
    if len(quarantine):
        log.warning(
            "media: %d items quarantined (data/03_primary/media/quarantine.parquet), by reason: %s",
            len(quarantine),
            quarantine["reason"].value_counts().to_dict(),
        )
    return quarantine, counts, {k: {"value": v, "step": 0} for k, v in metrics.items()}
