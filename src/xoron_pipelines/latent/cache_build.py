"""Building the embedding cache (seed 004, "Caching"): encode texts once with the frozen encoder
and keep the result in a cache the latent trainer reads. The ``embedding_cache`` pipeline's nodes
make a :class:`CacheBuild` (rows, decoder tokenizer, parameters, fingerprint; nothing encoded
yet); the catalog's :class:`~xoron_pipelines.datasets.embedding_cache.EmbeddingCacheDataset`
saves it: it reuses the stored cache when the fingerprint is unchanged, else it calls
:meth:`CacheBuild.write` into a temporary directory that is then swapped in atomically.

Two caches ("subsets"), each a directory ``<subset>/{train,val[,test]}`` + ``manifest.json``:

* ``pairs``    -- (source, target) pairs, e.g. dialogue -> summary (stages 3-4);
* ``pretrain`` -- general text whose target is the text itself (identity, stages 1-2); for a
  truncated text the target is the part the encoder saw.

Rows with an empty source or target are not encoded: they go to the subset's
``quarantine.jsonl`` with a reason and are counted. Sources longer than the encoder's limit
are truncated and counted, targets longer than ``max_target_len`` as well.

A row's split is the split it came from when the source has named splits (``Row.split``), else
a seeded hash draws ``preprocess_validation_fraction`` of the rows into ``val``.

A subset is rebuilt only when its fingerprint -- encoder files, input rows, decoder tokenizer
and the parameters that shape the cache -- differs from the stored one (or
``skip_preprocessing_if_cached`` is false); otherwise the stored cache is reused without loading
the encoder.

Rows are encoded in chunks (:func:`chunks`, :func:`encode_chunk`) in this process
(``engine.kind: local``) or on a Ray Data actor pool (``ray``,
:mod:`xoron_pipelines.latent.cache_build_ray`); both write the same chunks in the same order, so
the cache is byte-identical and the engine is not part of the fingerprint.

``p`` below is the validated ``embedding_cache`` parameter group
(:class:`xoron_pipelines.pipelines.embedding_cache.params.Params`).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from xoron_pipelines.latent.cache import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    CacheWriter,
    embedding_fields,
    fingerprint,
    write_json,
)
from xoron_pipelines.latent.encoder import Encoded, Encoder, directory_digest, resolve_encoder_dir

log = logging.getLogger(__name__)

QUARANTINE_FILE = "quarantine.jsonl"
ROW_GROUP_ROWS = 256
# batches encoded per chunk (length-sorted together, then written in order); per-token states
# are ~max_seq_len times larger than mean vectors, so their chunks are smaller
CHUNK_BATCHES = {"mean": 32, "tokens": 4}
SPLITS = ("train", "val")  # always written; "test" too when a source has a test split
# parameters that act through the selected rows (hashed as data) or not on the content at all
_NOT_FINGERPRINTED = {
    "skip_preprocessing_if_cached",
    "preprocess_cache_dir",
    "progress",
    "source_field",
    "target_field",
    "max_train_samples",
    "pretrain_text_field",
    "max_pretrain_samples",
    "engine",  # where the chunks are encoded, not what they hold
}


@dataclass
class Row:
    """One input: ``target`` is None for identity rows (pretraining text)."""

    index: int
    source: Any
    target: Any = None
    split: str | None = None  # "train" / "val" / "test" from a source with named splits, else drawn


@dataclass
class Counts:
    """What happened to a subset's rows (logged to MLflow, stored in the manifest)."""

    rows_in: int = 0
    texts_encoded: int = 0
    empty_source: int = 0
    empty_target: int = 0
    truncated_sources: int = 0
    truncated_targets: int = 0
    rows_train: int = 0
    rows_val: int = 0
    rows_test: int = 0
    embedding_bytes_int8: int = 0
    embedding_bytes_fp32: int = 0
    cos_sum: float = 0.0  # int8 -> fp32 cosine of every stored vector (per token for ``tokens``)
    cos_n: int = 0
    cos_min: float = 1.0

    def add_cos(self, cos: np.ndarray) -> None:
        self.cos_sum += float(cos.sum())
        self.cos_n += cos.size
        self.cos_min = min(self.cos_min, float(cos.min()))

    def as_dict(self) -> dict[str, float]:
        out = {k: float(v) for k, v in vars(self).items() if not k.startswith("cos_")}
        if self.cos_n:
            out["fidelity_cos_mean"] = self.cos_sum / self.cos_n
            out["fidelity_cos_min"] = self.cos_min
        return out


# --------------------------------------------------------------------------- inputs
def records(data: Any, columns: list[str]) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet shard set (``iter_batches``), a DataFrame or an iterable of dicts."""
    if hasattr(data, "iter_batches"):
        names = set(data.dataset().schema.names)
        for batch in data.iter_batches(columns=[c for c in columns if c in names]):
            yield from batch.to_pylist()
    elif hasattr(data, "to_dict") and hasattr(data, "columns"):
        yield from data.to_dict("records")
    else:
        yield from data


def pair_rows(data: Any, p: Any) -> list[Row]:
    """(source, target) rows from ``source_field`` / ``target_field``, the first
    ``max_train_samples`` of them when set. ``data``: rows (see :func:`records`), or a dict
    split -> rows (``train`` / ``val`` / ``test``, from :func:`xoron_pipelines.latent.sources.pair_source`):
    rows are then numbered across the splits in that order and keep their split (train rows are
    left to the seeded draw when there is no ``val``)."""
    parts = data.items() if isinstance(data, dict) else [(None, data)]
    rows: list[Row] = []
    for split, part in parts:
        tag = None if split == "train" and "val" not in data else split
        for rec in records(part, [p.source_field, p.target_field]):
            if p.max_train_samples is not None and len(rows) >= p.max_train_samples:
                return rows
            rows.append(Row(len(rows), rec.get(p.source_field), rec.get(p.target_field), tag))
    return rows


def pretrain_rows(data: Any, p: Any) -> list[Row]:
    """``max_pretrain_samples`` texts drawn uniformly (by a seeded hash of the text, so the
    sample does not depend on the input order) from the kept rows (``status == "kept"`` where
    the input has a status column, as the data_processing ledger does); kept in input order."""
    if p.max_pretrain_samples == 0:
        return []

    def keyed() -> Iterator[tuple[bytes, int, Any]]:
        for i, rec in enumerate(records(data, [p.pretrain_text_field, "status"])):
            if rec.get("status", "kept") == "kept":
                text = rec.get(p.pretrain_text_field)
                yield hashlib.blake2b(f"{p.seed}\x00{text}".encode(), digest_size=8).digest(), i, text

    chosen = heapq.nsmallest(p.max_pretrain_samples, keyed(), key=lambda t: (t[0], t[1]))
    return [Row(i, text) for _, i, text in sorted(chosen, key=lambda t: t[1])]


# --------------------------------------------------------------------------- fingerprint
def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of the decoder tokenizer's full definition (vocab, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    text += json.dumps([tokenizer.eos_token_id, tokenizer.pad_token_id])
    return hashlib.sha256(text.encode()).hexdigest()


def subset_fingerprint(subset: str, rows: list[Row], tokenizer: Any, encoder_dir: Path, p: Any) -> str:
    """Identity of a subset's cache: (encoder files, data rows, decoder tokenizer, parameters)."""
    data = hashlib.sha256()
    for r in rows:
        data.update(json.dumps([r.index, r.source, r.target] + ([r.split] if r.split else []), default=str).encode())
    return fingerprint(
        {
            "format_version": FORMAT_VERSION,
            "subset": subset,
            "encoder": directory_digest(encoder_dir),
            "data": data.hexdigest(),
            "decoder_tokenizer": tokenizer_digest(tokenizer),
            "params": p.model_dump(exclude=_NOT_FINGERPRINTED),
        }
    )


# --------------------------------------------------------------------------- cache layout
def cache_schema(p: Any) -> pa.Schema:
    """Columns of a cache split; the ``cache_store_*`` controls decide the optional ones."""
    fields = [pa.field("index", pa.int64()), pa.field("num_tokens", pa.int32()), pa.field("truncated", pa.bool_())]
    if p.cache_store_text:
        fields += [pa.field("text", pa.string()), pa.field("target_text", pa.string())]
    if p.cache_store_input_ids:
        fields.append(pa.field("input_ids", pa.list_(pa.int32())))
    if p.cache_store_attention_mask:
        fields.append(pa.field("attention_mask", pa.list_(pa.int8())))
    if p.cache_store_target_ids:
        fields.append(pa.field("target_ids", pa.list_(pa.int32())))
    if p.cache_store_target_attention_mask:
        fields.append(pa.field("target_attention_mask", pa.list_(pa.int8())))
    return pa.schema(fields + embedding_fields(p.cache_store_embeddings_int8, p.pooling))


def is_val(p: Any, subset: str, index: int) -> bool:
    """Seeded, order-independent train/val assignment with ``preprocess_validation_fraction``."""
    digest = hashlib.blake2b(f"{p.seed}\x00{subset}\x00{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < p.preprocess_validation_fraction


def _pad(seq: list[int], width: int, pad: int) -> tuple[list[int], list[int]]:
    return seq + [pad] * (width - len(seq)), [1] * len(seq) + [0] * (width - len(seq))


def decoder_targets(tokenizer: Any, texts: list[str], max_len: int) -> tuple[list[list[int]], list[bool]]:
    """Decoder token ids of ``texts`` followed by EOS (when the tokenizer has one), cut to
    ``max_len`` (EOS kept as the last id); also which targets were cut."""
    eos = tokenizer.eos_token_id
    ids, cut = [], []
    for row in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        row = list(row) + ([eos] if eos is not None else [])
        cut.append(len(row) > max_len)
        ids.append(row[: max_len - 1] + [row[-1]] if len(row) > max_len else row)
    return ids, cut


# --------------------------------------------------------------------------- build
def _is_empty(text: Any) -> bool:
    return not isinstance(text, str) or not text.strip()


def _quarantine(rows: list[Row], subset: str, counts: Counts, out: list[dict]) -> list[Row]:
    """Rows fit to encode; the others are recorded in ``out`` with a reason and counted."""
    good = []
    for r in rows:
        reason = (
            "empty_source"
            if _is_empty(r.source)
            else "empty_target"
            if r.target is not None and _is_empty(r.target)
            else None
        )
        if reason is None:
            good.append(r)
            continue
        setattr(counts, reason, getattr(counts, reason) + 1)
        out.append({"subset": subset, "index": r.index, "reason": reason})
    return good


#: per-row accounting columns of an encoded chunk (folded into :class:`Counts` in row order)
ACCOUNTING = ("truncated_target", "bytes_fp32", "bytes_int8", "cos_sum", "cos_n", "cos_min")


def _account_embeddings(enc: Encoded) -> dict[str, list]:
    """Per row: bytes int8 vs fp32, and the int8 -> fp32 cosine fidelity of its stored vector(s)
    (sum, count, min; count 0 when not quantised)."""
    acc: dict[str, list] = {"bytes_fp32": [], "bytes_int8": [], "cos_sum": [], "cos_n": [], "cos_min": []}
    for i, vec in enumerate(enc.vectors):
        scales = 1 if vec.ndim == 1 else vec.shape[0]
        acc["bytes_fp32"].append(4 * vec.size)
        acc["bytes_int8"].append(vec.size + 4 * scales)
        cos = np.zeros(0, np.float32)
        if enc.q is not None:
            deq = enc.q[i].astype(np.float32) * (enc.scale[i][..., None] if vec.ndim == 2 else enc.scale[i])
            num = (deq * vec).sum(-1)
            den = np.linalg.norm(deq, axis=-1) * np.linalg.norm(vec, axis=-1)
            cos = np.atleast_1d(num / np.maximum(den, 1e-12))
        acc["cos_sum"].append(float(cos.sum()))
        acc["cos_n"].append(int(cos.size))
        acc["cos_min"].append(float(cos.min()) if cos.size else 1.0)
    return acc


def fold_counts(counts: Counts, cols: dict[str, list]) -> None:
    """Add an encoded chunk's per-row accounting (:data:`ACCOUNTING`, ``truncated``) to ``counts``,
    row by row in order (so every engine sums the floats in the same order)."""
    counts.truncated_sources += sum(bool(t) for t in cols["truncated"])
    counts.truncated_targets += sum(bool(t) for t in cols["truncated_target"])
    counts.embedding_bytes_fp32 += sum(cols["bytes_fp32"])
    counts.embedding_bytes_int8 += sum(cols["bytes_int8"])
    for total, n, low in zip(cols["cos_sum"], cols["cos_n"], cols["cos_min"]):
        if n:
            counts.cos_sum += total
            counts.cos_n += n
            counts.cos_min = min(counts.cos_min, low)


def encode_chunk(rows: list[Row], encoder: Encoder, tokenizer: Any, p: Any) -> dict[str, list]:
    """Encode one chunk of rows into the cache's column dict: every optional column (the writer
    keeps those of its schema) and the per-row :data:`ACCOUNTING` columns. A pure function of
    the chunk: the local and the Ray engine call it on the same chunks (same batches inside)."""
    tok = encoder.tokenize([r.source for r in rows])
    enc = encoder.encode_ids(tok.input_ids, p.preprocess_batch_size, quantize=p.cache_store_embeddings_int8)
    targets = [r.target if r.target is not None else r.source[:cov] for r, cov in zip(rows, tok.covered_chars)]
    target_ids, target_cut = decoder_targets(tokenizer, targets, p.max_target_len)
    dec_pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    enc_padded = [_pad(ids, encoder.max_length, encoder.pad_id) for ids in tok.input_ids]
    dec_padded = [_pad(ids, p.max_target_len, dec_pad) for ids in target_ids]
    cols: dict[str, list] = {
        "index": [r.index for r in rows],
        "num_tokens": [len(ids) for ids in tok.input_ids],
        "truncated": tok.truncated,
        "text": [r.source for r in rows],
        "target_text": targets,
        "input_ids": [ids for ids, _ in enc_padded],
        "attention_mask": [mask for _, mask in enc_padded],
        "target_ids": [ids for ids, _ in dec_padded],
        "target_attention_mask": [mask for _, mask in dec_padded],
        "truncated_target": target_cut,
        **_account_embeddings(enc),
    }
    if enc.q is not None:
        cols["embedding"] = [q.reshape(-1) for q in enc.q]
        cols["embedding_scale"] = list(enc.scale)
    else:
        cols["embedding"] = [v.reshape(-1) for v in enc.vectors]
    return cols


def _write_chunk(cols: dict[str, list], splits: list[str], writers: dict[str, CacheWriter]) -> None:
    for split, writer in writers.items():
        keep = [i for i, s in enumerate(splits) if s == split]
        if keep:
            writer.write_rows({name: [cols[name][i] for i in keep] for name in writer.schema.names})


def chunks(good: list[Row], p: Any) -> list[list[Row]]:
    """The encoding chunks of a subset's rows (``preprocess_batch_size`` x :data:`CHUNK_BATCHES`
    rows each): the unit of work of both engines, so their batches -- and numbers -- agree."""
    size = p.preprocess_batch_size * CHUNK_BATCHES[p.pooling]
    return [good[start : start + size] for start in range(0, len(good), size)]


def row_split(p: Any, subset: str, row: Row) -> str:
    """The cache split of ``row``: its source's split when it has one, else drawn by :func:`is_val`."""
    return row.split or ("val" if is_val(p, subset, row.index) else "train")


def subset_splits(rows: list[Row]) -> list[str]:
    """Splits of a subset's cache: train and val always, test when a row comes from a test split."""
    return list(SPLITS) + (["test"] if any(r.split == "test" for r in rows) else [])


def _encode_subset(
    subset: str, rows: list[Row], encoder: Encoder, tokenizer: Any, p: Any, tmp_dir: Path, meta: dict
) -> tuple[Counts, list[dict]]:
    """Encode ``rows`` into ``tmp_dir/<split>``; returns counts and quarantine records. The chunks
    are encoded here (``engine.kind`` local) or by a Ray actor pool (``ray``), and written here
    in the same order either way."""
    engine = p.engine
    counts, quarantined = Counts(rows_in=len(rows)), []
    good = _quarantine(rows, subset, counts, quarantined)
    schema = cache_schema(p)
    writers = {
        s: CacheWriter(
            tmp_dir / s,
            schema,
            p.cache_rows_per_shard,
            ROW_GROUP_ROWS,
            p.cache_write_offsets_index,
            fmt=p.preprocess_format,
        )
        for s in subset_splits(rows)
    }
    with tqdm(total=len(good), desc=f"embedding_cache/{subset}", unit="text", disable=not p.progress) as bar:
        if engine.kind == "ray":
            from xoron_pipelines.latent.cache_build_ray import encode_subset_ray

            encode_subset_ray(subset, good, tokenizer, p, engine, writers, counts, bar)
        else:
            for part in chunks(good, p):
                cols = encode_chunk(part, encoder, tokenizer, p)
                fold_counts(counts, cols)
                _write_chunk(cols, [row_split(p, subset, r) for r in part], writers)
                bar.update(len(part))
    for split, writer in writers.items():
        written = writer.close({**meta, "split": split})
        setattr(counts, f"rows_{split}", written["num_rows"])
    counts.texts_encoded = len(good)
    return counts, quarantined


@functools.lru_cache(maxsize=1)
def load_encoder(
    model: str, max_seq_len: int, pooling: str, normalize: Any, trust_remote_code: bool, digest: str
) -> Encoder:
    """The frozen encoder, loaded once per process for both nodes (``digest`` -- of the encoder's
    files -- is part of the key, so an edited encoder directory is loaded afresh)."""
    return Encoder(model, max_seq_len, pooling, normalize, trust_remote_code)


def read_manifest(subset_dir: Path) -> dict[str, Any] | None:
    """The stored ``manifest.json`` of a subset directory, or None when there is none."""
    path = Path(subset_dir) / MANIFEST_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def cache_metrics(manifest: dict[str, Any]) -> dict[str, dict[str, float]]:
    """MLflow metrics (``MlflowMetricsHistoryDataset`` format) of a subset: its counts, and
    ``cache_hit`` / ``cache_miss`` of the last save (whether it reused the stored cache)."""
    hit = bool(manifest.get("cache_hit", False))
    values = {**manifest["counts"], "cache_hit": float(hit), "cache_miss": float(not hit)}
    return {k: {"value": v, "step": 0} for k, v in values.items()}


@dataclass
class CacheBuild:
    """One subset's cache, not yet encoded: what the ``embedding_cache`` nodes return and
    :class:`~xoron_pipelines.datasets.embedding_cache.EmbeddingCacheDataset` saves."""

    subset: str
    rows: list[Row]
    tokenizer: Any
    params: Any
    fingerprint: str
    encoder_dir: Path

    def reuses(self, stored: dict[str, Any] | None) -> bool:
        """Whether ``stored`` (a manifest, or None) can stand for this build."""
        return bool(
            self.params.skip_preprocessing_if_cached
            and stored is not None
            and stored.get("fingerprint") == self.fingerprint
        )

    def reason(self, stored: dict[str, Any] | None) -> str:
        return (
            "disabled reuse"
            if not self.params.skip_preprocessing_if_cached
            else "no cache"
            if stored is None
            else "fingerprint changed"
        )

    def write(self, directory: Path) -> dict[str, Any]:
        """Encode the rows into ``directory`` (an empty temporary directory the caller publishes)
        and return the manifest written there."""
        p, tokenizer, subset = self.params, self.tokenizer, self.subset
        encoder = load_encoder(
            p.encoder_model,
            p.max_seq_len,
            p.pooling,
            p.normalize,
            p.trust_remote_code,
            directory_digest(self.encoder_dir),
        )
        meta = {
            "subset": subset,
            "fingerprint": self.fingerprint,
            "encoder": encoder.describe(),
            "embedding": {
                "dtype": "int8" if p.cache_store_embeddings_int8 else "float32",
                "dim": encoder.hidden_size,
                "pooling": p.pooling,
                "normalize": encoder.normalize,
            },
            "decoder": {
                "eos_id": tokenizer.eos_token_id,
                "pad_id": tokenizer.pad_token_id,
                "vocab_size": len(tokenizer),
            },
            "max_target_len": p.max_target_len,
            "cache_use_embeddings_for_training": p.cache_use_embeddings_for_training,
        }
        counts, quarantined = _encode_subset(subset, self.rows, encoder, tokenizer, p, directory, meta)
        with (directory / QUARANTINE_FILE).open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(q) + "\n" for q in quarantined)
        manifest = {
            **meta,
            "splits": subset_splits(self.rows),
            "quarantine": QUARANTINE_FILE,
            "counts": counts.as_dict(),
            "params": p.model_dump(),
            "cache_hit": False,
        }
        write_json(directory / MANIFEST_FILE, manifest)
        _log_counts(subset, manifest["counts"])
        return manifest


def plan_subset(subset: str, rows: list[Row], tokenizer: Any, p: Any) -> CacheBuild:
    """The :class:`CacheBuild` of one subset (a missing encoder fails here, before any work)."""
    encoder_dir = resolve_encoder_dir(p.encoder_model)
    return CacheBuild(
        subset, rows, tokenizer, p, subset_fingerprint(subset, rows, tokenizer, encoder_dir, p), encoder_dir
    )


def _log_counts(subset: str, counts: dict[str, float]) -> None:
    log.info(
        "embedding_cache/%s: %d encoded (%d train / %d val / %d test), %d empty source, %d empty target, "
        "%d sources and %d targets truncated",
        subset,
        counts["texts_encoded"],
        counts["rows_train"],
        counts["rows_val"],
        counts.get("rows_test", 0),
        counts["empty_source"],
        counts["empty_target"],
        counts["truncated_sources"],
        counts["truncated_targets"],
    )


# --------------------------------------------------------------------------- reading back
def raw_texts(data: Any, subset: str, p: Any, wanted: set[int] | None = None) -> dict[int, tuple]:
    """Raw row index -> (source, target, ledger source) as the cache indexed ``data`` (the same
    input the subset was built from); only the indices in ``wanted`` when given (the
    pretraining ledger can be large)."""
    if subset == "pairs":
        rows = ((r.index, (r.source, r.target, None)) for r in pair_rows(data, p))
    else:
        field = p.pretrain_text_field
        rows = (
            (i, (rec.get(field), rec.get(field), rec.get("source")))
            for i, rec in enumerate(records(data, [field, "status", "source"]))
        )
    return {i: row for i, row in rows if wanted is None or i in wanted}
