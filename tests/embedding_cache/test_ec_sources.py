"""Seed 004's dataset knobs and cache format: the pairs come from ``latent.dataset_name`` (synth
partition, local file / folder / HF ``save_to_disk`` dir) with its ``train_split`` /
``validation_split`` / ``test_split``; ``preprocess_format`` jsonl and parquet read back the same."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ec_helpers import TEXTS, save_cache

from xoron_pipelines.latent.cache_build import raw_texts
from xoron_pipelines.latent.sources import pair_source
from xoron_pipelines.pipelines.embedding_cache import nodes
from xoron_pipelines.pipelines.embedding_cache.params import Params

SPLITS = ("train", "validation", "test")


def pairs(tag: str, n: int) -> list[dict]:
    return [
        {"source": f"{tag} dialogue {i}: {TEXTS[i % len(TEXTS)]}", "target": f"{tag} summary {i}"} for i in range(n)
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def cached_sources(sub, split):
    return [r["text"] for r in sub.splits[split]]


def test_folder_splits_become_cache_splits(decoder_tokenizer, params, shared_encoder, tmp_path):
    """A folder of <split> files: train / validation / test rows land in the cache's train / val /
    test splits (no seeded draw), renamed splits follow the knobs, and the latent node's raw-text
    join finds every cached row in the same source."""
    folder = tmp_path / "samsum"
    folder.mkdir()
    write_jsonl(folder / "tr.jsonl", pairs("train", 5))
    pq.write_table(pa.Table.from_pylist(pairs("dev", 2)), folder / "dev-00000-of-00001.parquet")
    write_jsonl(folder / "holdout.jsonl", pairs("test", 3))
    latent = {"dataset_name": str(folder), "train_split": "tr", "validation_split": "dev", "test_split": "holdout"}
    p = {**params, "cache_store_text": True, "preprocess_validation_fraction": 0.5}
    sub, m = save_cache(nodes.cache_pairs({}, decoder_tokenizer, p, latent), params["preprocess_cache_dir"])
    assert sub.manifest["splits"] == ["train", "val", "test"]
    assert cached_sources(sub, "train") == [r["source"] for r in pairs("train", 5)]
    assert cached_sources(sub, "val") == [r["source"] for r in pairs("dev", 2)]
    assert cached_sources(sub, "test") == [r["source"] for r in pairs("test", 3)] == [r["text"] for r in sub.test]
    assert (m["rows_train"], m["rows_val"], m["rows_test"]) == (5, 2, 3)
    texts = raw_texts(pair_source({}, folder.as_posix(), ("tr", "dev", "holdout")), "pairs", Params.model_validate(p))
    for split in sub.splits.values():
        for r in split:
            assert texts[r["index"]][0] == r["text"] and texts[r["index"]][1] == r["target_text"]

    # without a validation split, val is drawn from train by preprocess_validation_fraction
    (folder / "dev-00000-of-00001.parquet").unlink()
    sub, m = save_cache(nodes.cache_pairs({}, decoder_tokenizer, p, latent), params["preprocess_cache_dir"])
    assert m["rows_train"] + m["rows_val"] == 5 and m["rows_val"] > 0 and m["rows_test"] == 3


def test_hf_save_to_disk_and_single_file_sources(tmp_path):
    import datasets

    d = datasets.DatasetDict({s: datasets.Dataset.from_list(pairs(s, 2 + i)) for i, s in enumerate(SPLITS)})
    d.save_to_disk(str(tmp_path / "hf"))
    got = pair_source({}, str(tmp_path / "hf"), SPLITS)
    assert {k: [r["target"] for r in v] for k, v in got.items()} == {
        "train": [r["target"] for r in pairs("train", 2)],
        "val": [r["target"] for r in pairs("validation", 3)],
        "test": [r["target"] for r in pairs("test", 4)],
    }
    with pytest.raises(
        ValueError,
        match=r"latent.train_split='nope' is not a split of .*hf \(it has \['test', 'train', 'validation'\]\)",
    ):
        pair_source({}, str(tmp_path / "hf"), ("nope", "validation", "test"))
    # one file (jsonl or parquet): one source, no splits; the default is synth's own partition
    write_jsonl(tmp_path / "p.jsonl", pairs("f", 3))
    pq.write_table(pa.Table.from_pylist(pairs("f", 3)), tmp_path / "p.parquet")
    assert (
        pair_source({}, str(tmp_path / "p.jsonl"), SPLITS)
        == pair_source({}, str(tmp_path / "p.parquet"), SPLITS)
        == pairs("f", 3)
    )
    assert pair_source({"dialogue_summary": lambda: pairs("s", 2)}, "synth/dialogue_summary", SPLITS) == pairs("s", 2)
    with pytest.raises(ValueError, match="synth_raw has no partition 'chat'"):
        pair_source({"dialogue_summary": list}, "synth/chat", SPLITS)


def test_hub_id_needs_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="knkarthick/samsum.*not a local path and Hugging Face is offline"):
        pair_source({}, "knkarthick/samsum", SPLITS)


def test_jsonl_and_parquet_formats_read_back_the_same(decoder_tokenizer, params, shared_encoder):
    """preprocess_format: the same rows (values and dtypes) through random access, iteration,
    bulk reads and embeddings(), with and without the offsets index."""
    data = {"dialogue_summary": pairs("x", 12)}
    every = {k: True for k in ("cache_store_text", "cache_store_input_ids", "cache_store_attention_mask")}
    subs = {}
    for fmt in ("parquet", "jsonl"):
        for offsets in (True, False):
            p = {
                **params,
                **every,
                "preprocess_format": fmt,
                "cache_write_offsets_index": offsets,
                "cache_rows_per_shard": 5,
                "preprocess_validation_fraction": 0.3,
                "preprocess_cache_dir": f"{params['preprocess_cache_dir']}/{fmt}{offsets}",
            }
            subs[fmt, offsets], _ = save_cache(
                nodes.cache_pairs(data, decoder_tokenizer, p, {}), p["preprocess_cache_dir"]
            )
    ref = subs["parquet", True]
    assert all(f.suffix == ".jsonl" for f in subs["jsonl", True].train.files)
    assert len(subs["jsonl", True].train.files) == len(ref.train.files) == -(-len(ref.train) // 5)
    for key, sub in subs.items():
        for split in ("train", "val"):
            a, b = ref.splits[split], sub.splits[split]
            assert len(a) == len(b) > 0, key
            assert a.read().equals(b.read()), key
            rows_a, rows_b = [a[i] for i in reversed(range(len(a)))], [b[i] for i in reversed(range(len(b)))]
            for ra, rb in zip(rows_a + list(a), rows_b + list(b)):
                assert ra.keys() == rb.keys()
                for k in ra:
                    va, vb = np.asarray(ra[k]), np.asarray(rb[k])
                    assert va.dtype == vb.dtype and np.array_equal(va, vb), (key, k)
            np.testing.assert_array_equal(a.embeddings(), b.embeddings())
