"""Cache writer / reader without an encoder: random access through the offsets index reads one
row group of one shard; the same rows come back without the index; layout facts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xoron_pipelines.latent import cache as cache_mod
from xoron_pipelines.latent.cache import CacheWriter, EmbeddingCache, embedding_fields

DIM = 8


def _write(path, n=23, rows_per_shard=10, row_group_rows=4, offsets=True, pooling="mean"):
    schema = pa.schema([pa.field("index", pa.int64()), *embedding_fields(True, pooling)])
    rng = np.random.default_rng(0)
    vectors = []
    writer = CacheWriter(path, schema, rows_per_shard, row_group_rows, offsets)
    for start in range(0, n, 3):  # writes smaller than a row group are buffered
        idx = list(range(start, min(n, start + 3)))
        tokens = [1 + i % 3 for i in idx]
        vec = [rng.normal(size=(t, DIM) if pooling == "tokens" else DIM).astype(np.float32) for t in tokens]
        vectors += vec
        scale = [np.abs(v).max(-1) / 127 for v in vec]
        q = [np.round(v / (s[..., None] if v.ndim == 2 else s)).astype(np.int8) for v, s in zip(vec, scale)]
        writer.write_rows(
            {
                "index": idx,
                "embedding": [x.reshape(-1) for x in q],
                "embedding_scale": [s.tolist() if v.ndim == 2 else float(s) for v, s in zip(vec, scale)],
            }
        )
    writer.close({"embedding": {"dim": DIM, "pooling": pooling, "dtype": "int8"}})
    return vectors


def test_layout_and_random_access_reads_one_row_group(tmp_path, monkeypatch):
    vectors = _write(tmp_path)
    cache = EmbeddingCache(tmp_path)
    assert cache.meta["shards"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    groups = [pq.ParquetFile(tmp_path / s).metadata for s in cache.meta["shards"]]
    assert [[m.row_group(g).num_rows for g in range(m.num_row_groups)] for m in groups] == [[4, 4, 2], [4, 4, 2], [3]]
    offsets = np.load(tmp_path / "offsets.npy")
    assert offsets.shape == (23, 3) and offsets[13].tolist() == [1, 0, 3] and offsets[22].tolist() == [2, 0, 2]

    full = cache.read().to_pylist()
    opened, groups_read = [], []
    real = pq.ParquetFile

    class Spy(real):
        def __init__(self, path, *a, **k):
            opened.append(path)
            super().__init__(path, *a, **k)

        def read_row_group(self, i, *a, **k):
            groups_read.append(i)
            return super().read_row_group(i, *a, **k)

        def read(self, *a, **k):  # a whole-shard read is what the index avoids
            raise AssertionError("whole shard read")

    monkeypatch.setattr(cache_mod.pq, "ParquetFile", Spy)
    fresh = EmbeddingCache(tmp_path)
    row = fresh[13]
    assert opened == [str(tmp_path / "part-00001.parquet")] and groups_read == [0]
    assert row["index"] == full[13]["index"] == 13
    np.testing.assert_array_equal(row["embedding_int8"], full[13]["embedding"])
    cos = row["embedding"] @ vectors[13] / (np.linalg.norm(row["embedding"]) * np.linalg.norm(vectors[13]))
    assert cos > 0.99
    for i in range(-1, 23):
        assert fresh[i]["index"] == full[i]["index"]
    with pytest.raises(IndexError):
        fresh[23]


def test_without_offsets_index_same_rows(tmp_path):
    _write(tmp_path / "with")
    _write(tmp_path / "without", offsets=False)
    assert not (tmp_path / "without" / "offsets.npy").exists()
    a, b = EmbeddingCache(tmp_path / "with"), EmbeddingCache(tmp_path / "without")
    assert b.meta["offsets_index"] is None
    np.testing.assert_array_equal(np.asarray(a.offsets), b.offsets)
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["embedding"], b[i]["embedding"])
    np.testing.assert_array_equal(a.embeddings(), np.stack([a[i]["embedding"] for i in range(len(a))]))


def test_token_states_round_trip(tmp_path):
    vectors = _write(tmp_path, n=7, pooling="tokens")
    cache = EmbeddingCache(tmp_path)
    for i, vec in enumerate(vectors):
        row = cache[i]
        assert row["embedding"].shape == vec.shape and row["embedding_scale"].shape == (vec.shape[0],)
        np.testing.assert_allclose(row["embedding"], vec, atol=np.abs(vec).max() / 127)
    assert [r["index"] for r in cache] == list(range(7))
    with pytest.raises(ValueError, match="mean pooling"):
        cache.embeddings()
