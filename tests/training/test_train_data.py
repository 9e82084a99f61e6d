"""Batch sources: deterministic per (seed, epoch), random access, Parquet == in-memory."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from xoron_pipelines.training import BatchSource, ParquetBatchSource, TensorBatchSource


def _rows(n=10, t=6):
    return torch.arange(n * t, dtype=torch.int32).reshape(n, t)


def _write_shards(directory, rows, lengths):
    directory.mkdir()
    for i, sl in enumerate((slice(0, 4), slice(4, None))):  # two shards
        ids = pa.array([r.tolist() for r in rows[sl]], type=pa.list_(pa.int32()))
        pq.write_table(
            pa.table({"input_ids": ids, "length": pa.array(lengths[sl], type=pa.int32())}),
            directory / f"part-{i:05d}.parquet",
        )


def test_epoch_is_a_permutation_and_deterministic():
    src = TensorBatchSource(_rows(), batch_size=3, seed=1)
    assert isinstance(src, BatchSource) and len(src) == 3  # 10 rows, last partial batch dropped
    first = [src.batch(0, i)["input_ids"][:, 0] // 6 for i in range(3)]
    seen = torch.cat(first).tolist()
    assert len(set(seen)) == 9 and set(seen) <= set(range(10))
    again = TensorBatchSource(_rows(), batch_size=3, seed=1)
    assert all(torch.equal(again.batch(0, i)["input_ids"], src.batch(0, i)["input_ids"]) for i in (2, 0, 1))
    epoch1 = torch.cat([src.batch(1, i)["input_ids"][:, 0] for i in range(3)])
    assert not torch.equal(epoch1, torch.cat([b * 6 for b in first]))  # a new order each epoch
    other_seed = TensorBatchSource(_rows(), batch_size=3, seed=2)
    assert not torch.equal(other_seed.batch(0, 0)["input_ids"], src.batch(0, 0)["input_ids"])
    with pytest.raises(IndexError):
        src.batch(0, 3)


def test_unshuffled_keeps_file_order_and_labels():
    b = TensorBatchSource(_rows(), batch_size=2, shuffle=False).batch(5, 1)
    assert torch.equal(b["input_ids"], _rows()[2:4].long()) and b["input_ids"].dtype == torch.int64
    assert torch.equal(b["labels"], b["input_ids"])


def test_parquet_matches_tensor_source(tmp_path):
    rows = _rows()
    lengths = [6, 6, 4, 6, 2, 6, 6, 5, 6, 6]
    _write_shards(tmp_path / "shards", rows, lengths)
    pq_src = ParquetBatchSource(tmp_path / "shards", batch_size=2, seed=3)
    mem_src = TensorBatchSource(rows, batch_size=2, seed=3, lengths=torch.tensor(lengths))
    assert len(pq_src) == len(mem_src) == 5
    for epoch in (0, 1):
        for i in range(5):
            a, b = pq_src.batch(epoch, i), mem_src.batch(epoch, i)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # padding after `length` is ignored by the loss
    row2 = ParquetBatchSource(tmp_path / "shards", batch_size=1, shuffle=False).batch(0, 2)
    assert row2["labels"][0].tolist() == [12, 13, 14, 15, -100, -100]


def test_parquet_single_file_and_bad_rows(tmp_path):
    pq.write_table(
        pa.table({"input_ids": pa.array([[1, 2, 3], [4, 5, 6]], type=pa.list_(pa.int32()))}), tmp_path / "one.parquet"
    )
    src = ParquetBatchSource(tmp_path / "one.parquet", batch_size=1, shuffle=False)
    assert src.batch(0, 1)["input_ids"].tolist() == [[4, 5, 6]]
    pq.write_table(
        pa.table({"input_ids": pa.array([[1, 2, 3], [4, 5]], type=pa.list_(pa.int32()))}), tmp_path / "ragged.parquet"
    )
    with pytest.raises(ValueError, match="rows of one length"):
        ParquetBatchSource(tmp_path / "ragged.parquet", batch_size=1)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        ParquetBatchSource(tmp_path / "one.parquet", batch_size=3)
    # a validation split smaller than its batch (a small corpus): one batch of every row
    small = ParquetBatchSource(tmp_path / "one.parquet", batch_size=3, shuffle=False, shrink_batch=True)
    assert len(small) == 1 and small.batch(0, 0)["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_read_only_arrays_are_copied_not_shared():
    """Arrays read from Arrow are read-only: the source copies them (no torch warning, and the
    tensors it holds may be written)."""
    import warnings

    import numpy as np

    from xoron_pipelines.training.data import TokenRowsSource

    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    lengths = np.array([4, 3, 2])
    for a in (ids, lengths):
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = TokenRowsSource(ids, 1, 0, lengths=lengths)
    source.ids[0, 0] = 99
    assert ids[0, 0] == 0 and source.lengths.tolist() == [4, 3, 2]
