"""Node behaviour on tiny inputs with the packaged encoder: field controls, fingerprint reuse
and invalidation, bad input accounting, splits, sharding, batch size and input selection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ec_helpers import TEXTS, save_cache
from kedro.io import DatasetError

from xoron_pipelines.datasets.embedding_cache import EmbeddingCacheDataset
from xoron_pipelines.latent import cache_build
from xoron_pipelines.latent.encoder import PACKAGED_ENCODER, Encoder, resolve_encoder_dir
from xoron_pipelines.pipelines.embedding_cache import nodes
from xoron_pipelines.pipelines.embedding_cache.params import Params
from xoron_pipelines.validation import ParameterError, validate_group

PAIRS = [{"source": t, "target": f"Summary {i}: {t[:20]}"} for i, t in enumerate(TEXTS)]
FIELDS = {
    "cache_store_text": {"text", "target_text"},
    "cache_store_input_ids": {"input_ids"},
    "cache_store_attention_mask": {"attention_mask"},
    "cache_store_target_ids": {"target_ids"},
    "cache_store_target_attention_mask": {"target_attention_mask"},
}
ALWAYS = {"index", "num_tokens", "truncated", "embedding"}


def run_pairs(pairs, tok, params, **overrides):
    """The pair node on ``pairs`` (as synth's dialogue_summary partition), saved through the
    catalog dataset under ``preprocess_cache_dir``."""
    p = {**params, **overrides}
    return save_cache(nodes.cache_pairs({"dialogue_summary": pairs}, tok, p, {}), p["preprocess_cache_dir"])


@pytest.mark.parametrize("knob", sorted(FIELDS))
def test_each_field_control_toggles_its_columns(knob, decoder_tokenizer, params, shared_encoder):
    none = {k: False for k in FIELDS}
    off, _ = run_pairs(
        PAIRS, decoder_tokenizer, params, **none, preprocess_cache_dir=params["preprocess_cache_dir"] + "/off"
    )
    on, _ = run_pairs(PAIRS, decoder_tokenizer, params, **{k: k == knob for k in FIELDS})
    assert set(off.train.meta["columns"]) == ALWAYS | {"embedding_scale"}
    assert set(on.train.meta["columns"]) == ALWAYS | {"embedding_scale"} | FIELDS[knob]


def test_column_contents(decoder_tokenizer, params, shared_encoder):
    sub, m = run_pairs(
        PAIRS, decoder_tokenizer, params, **{k: True for k in FIELDS}, preprocess_validation_fraction=0.0
    )
    enc = Encoder(PACKAGED_ENCODER)
    rows = [sub.train[i] for i in range(len(sub.train))]
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and len(sub.val) == 0
    for r, pair in zip(rows, PAIRS):
        ids = enc.tokenizer(pair["source"])["input_ids"]
        assert r["num_tokens"] == len(ids) and r["input_ids"].shape == (256,)
        assert r["input_ids"][: len(ids)].tolist() == ids and set(r["input_ids"][len(ids) :]) <= {0}
        assert r["attention_mask"].sum() == len(ids)
        dec = decoder_tokenizer(pair["target"], add_special_tokens=False)["input_ids"] + [
            decoder_tokenizer.eos_token_id
        ]
        assert r["target_ids"][: len(dec)].tolist() == dec and r["target_ids"].shape == (256,)
        assert set(r["target_ids"][len(dec) :]) <= {decoder_tokenizer.pad_token_id}
        assert r["target_attention_mask"].tolist() == [1] * len(dec) + [0] * (256 - len(dec))
        assert r["text"] == pair["source"] and r["target_text"] == pair["target"]
    # int8 embeddings against fp32 from the encoder itself
    ref = np.stack(enc.encode_ids(enc.tokenize(TEXTS).input_ids, 4).vectors)
    got = sub.train.embeddings()
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99 and m["fidelity_cos_min"] >= 0.99
    assert m["embedding_bytes_fp32"] == 4 * 4 * 384 and m["embedding_bytes_int8"] == 4 * (384 + 4)
    assert sub.train.meta["cache_use_embeddings_for_training"] is True


def test_fp32_and_token_states(decoder_tokenizer, params, shared_encoder):
    fp32, m = run_pairs(
        PAIRS, decoder_tokenizer, params, cache_store_embeddings_int8=False, preprocess_validation_fraction=0.0
    )
    assert "embedding_scale" not in fp32.train.meta["columns"] and fp32.train.meta["embedding"]["dtype"] == "float32"
    assert fp32.train[0]["embedding"].dtype == np.float32 and "fidelity_cos_mean" not in m
    tokens, m = run_pairs(
        PAIRS,
        decoder_tokenizer,
        params,
        pooling="tokens",
        preprocess_validation_fraction=0.0,
        preprocess_cache_dir=params["preprocess_cache_dir"] + "/tok",
    )
    row = tokens.train[1]
    assert row["embedding"].shape == (row["num_tokens"], 384) and m["fidelity_cos_min"] >= 0.99


def test_fingerprint_reuse_and_invalidation(decoder_tokenizer, params, shared_encoder, tmp_path, monkeypatch):
    encodes = []
    real = Encoder.encode_ids
    monkeypatch.setattr(Encoder, "encode_ids", lambda self, *a, **k: encodes.append(1) or real(self, *a, **k))
    _, m = run_pairs(PAIRS, decoder_tokenizer, params)
    assert m["cache_miss"] == 1 and encodes
    encodes.clear()
    cache_build.load_encoder.cache_clear()
    built = len(shared_encoder)
    sub, m = run_pairs(PAIRS, decoder_tokenizer, params)  # unchanged: reused, no encoder at all
    assert m["cache_hit"] == 1 and m["texts_encoded"] == 4 and len(shared_encoder) == built and not encodes
    assert len(sub.train) + len(sub.val) == 4

    changed = [dict(PAIRS[0], target="another summary"), *PAIRS[1:]]
    copy = tmp_path / "enc"
    shutil.copytree(resolve_encoder_dir(PACKAGED_ENCODER), copy)
    (copy / "README.md").write_text("edited")  # same weights, different files: a different encoder
    for label, pairs, extra in (
        ("data", changed, {}),
        ("params", changed, {"max_target_len": 64}),
        ("encoder", changed, {"max_target_len": 64, "encoder_model": str(copy)}),
    ):
        encodes.clear()
        _, m = run_pairs(pairs, decoder_tokenizer, params, **extra)
        assert m["cache_miss"] == 1 and encodes, label
        encodes.clear()
        _, m = run_pairs(pairs, decoder_tokenizer, params, **extra)
        assert m["cache_hit"] == 1 and not encodes, label
    _, m = run_pairs(
        changed,
        decoder_tokenizer,
        params,
        max_target_len=64,
        encoder_model=str(copy),
        skip_preprocessing_if_cached=False,
    )
    assert m["cache_miss"] == 1 and encodes


def test_bad_input_counts_and_quarantine(decoder_tokenizer, params, shared_encoder):
    long_source = " ".join(f"word{i}" for i in range(60))
    long_target = "a long summary " * 20
    pairs = [
        {"source": "", "target": "x"},
        {"source": "   \n", "target": "x"},
        {"target": "no source field"},
        {"source": "fine source", "target": "  "},
        {"source": long_source, "target": "ok"},
        {"source": "fine", "target": long_target},
        {"source": "fine too", "target": "ok"},
    ]
    sub, m = run_pairs(
        pairs,
        decoder_tokenizer,
        params,
        max_seq_len=16,
        max_target_len=8,
        preprocess_validation_fraction=0.0,
        cache_store_text=True,
    )
    assert (m["rows_in"], m["empty_source"], m["empty_target"], m["texts_encoded"]) == (7, 3, 1, 3)
    assert (m["truncated_sources"], m["truncated_targets"]) == (1, 1)
    assert sub.quarantine() == [
        {"subset": "pairs", "index": 0, "reason": "empty_source"},
        {"subset": "pairs", "index": 1, "reason": "empty_source"},
        {"subset": "pairs", "index": 2, "reason": "empty_source"},
        {"subset": "pairs", "index": 3, "reason": "empty_target"},
    ]
    rows = {r["index"]: r for r in sub.train}
    assert sorted(rows) == [4, 5, 6]
    assert rows[4]["truncated"] and rows[4]["num_tokens"] == 16 and not rows[6]["truncated"]
    assert (
        rows[5]["target_ids"].tolist()[-1] == decoder_tokenizer.eos_token_id and rows[5]["target_attention_mask"].all()
    )


def test_pretrain_identity_targets_and_sampling(decoder_tokenizer, params, shared_encoder):
    ledger = [{"text": t, "status": "kept"} for t in TEXTS] + [{"text": "dropped record text", "status": "filtered"}]
    ledger.insert(1, {"text": "word " * 40, "status": "kept"})
    p = Params.model_validate({**params, "max_pretrain_samples": 3})
    picked = cache_build.pretrain_rows(ledger, p)
    assert len(picked) == 3 and [r.index for r in picked] == sorted(r.index for r in picked)
    assert all(ledger[r.index]["status"] == "kept" and ledger[r.index]["text"] == r.source for r in picked)
    # the sample depends on the texts and the seed, not on the input order
    assert {r.source for r in cache_build.pretrain_rows(ledger[::-1], p)} == {r.source for r in picked}
    assert {r.source for r in cache_build.pretrain_rows(ledger, p.model_copy(update={"seed": 7}))} != {
        r.source for r in picked
    }
    assert cache_build.pretrain_rows(ledger, p.model_copy(update={"max_pretrain_samples": 0})) == []

    sub, metrics = save_cache(
        nodes.cache_pretrain_text(
            ledger,
            decoder_tokenizer,
            {
                **params,
                "max_pretrain_samples": 10,
                "max_seq_len": 12,
                "cache_store_text": True,
                "preprocess_validation_fraction": 0.0,
            },
        ),
        params["preprocess_cache_dir"],
    )
    rows = {r["index"]: r for r in sub.train}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert metrics["truncated_sources"] == sum(r["truncated"] for r in rows.values()) >= 2
    assert rows[1]["target_text"] == "word " * 9 + "word"  # what the encoder saw: 10 words + [CLS] [SEP]
    for r in rows.values():
        assert r["target_text"] == r["text"] if not r["truncated"] else r["text"].startswith(r["target_text"])


def test_split_shards_and_batch_size(decoder_tokenizer, params, shared_encoder, monkeypatch):
    texts = [f"Sentence number {i} about topic {i % 3}." for i in range(24)]
    pairs = [{"source": t, "target": t} for t in texts]
    calls = []
    real_forward = Encoder.forward
    monkeypatch.setattr(Encoder, "forward", lambda self, ids: calls.append(len(ids)) or real_forward(self, ids))
    a, m = run_pairs(
        pairs,
        decoder_tokenizer,
        params,
        preprocess_validation_fraction=0.3,
        cache_rows_per_shard=5,
        preprocess_batch_size=7,
    )
    assert calls == [7, 7, 7, 3]
    train, val = [r["index"] for r in a.train], [r["index"] for r in a.val]
    assert sorted(train + val) == list(range(24)) and 0 < len(val) < 12 and m["rows_val"] == len(val)
    assert train == sorted(train) and len(a.train.meta["shards"]) == -(-len(train) // 5)
    calls.clear()
    b, _ = run_pairs(
        pairs,
        decoder_tokenizer,
        params,
        preprocess_validation_fraction=0.3,
        seed=1,
        preprocess_cache_dir=params["preprocess_cache_dir"] + "/b",
    )
    assert calls == [24] and [r["index"] for r in b.val] != val
    by_index = {r["index"]: r["embedding"] for r in list(a.train) + list(a.val)}
    for r in list(b.train) + list(b.val):  # batch size does not change the vectors
        np.testing.assert_allclose(r["embedding"], by_index[r["index"]], atol=2e-3)  # one int8 step at most


def test_pair_fields_and_limits(params):
    samsum = [{"id": str(i), "dialogue": f"d{i}", "summary": f"s{i}"} for i in range(5)]
    p = Params.model_validate({**params, "source_field": "dialogue", "target_field": "summary", "max_train_samples": 3})
    assert [(r.index, r.source, r.target) for r in cache_build.pair_rows(samsum, p)] == [
        (0, "d0", "s0"),
        (1, "d1", "s1"),
        (2, "d2", "s2"),
    ]


def test_parameter_validation(project_root: Path):
    import yaml

    base = yaml.safe_load((project_root / "conf/base/parameters_embedding_cache.yml").read_text())["embedding_cache"]
    assert validate_group("embedding_cache", base).encoder_model == PACKAGED_ENCODER
    for key, value, msg in (
        ("preprocess_format", "csv", "preprocess_format"),
        ("pooling", "cls", "pooling"),
        ("preprocess_validation_fraction", 1.0, "preprocess_validation_fraction"),
        ("preprocess_batch_size", 0, "preprocess_batch_size"),
        ("cache_use_embeddings_for_training", False, "re-encodes"),
        ("unknown_knob", 1, "unknown_knob"),
    ):
        with pytest.raises(ParameterError, match=msg):
            validate_group("embedding_cache", {**base, key: value})
    assert validate_group(
        "embedding_cache", {**base, "cache_use_embeddings_for_training": False, "cache_store_input_ids": True}
    )


def test_missing_encoder_fails_before_any_work(decoder_tokenizer, params, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        run_pairs(PAIRS, decoder_tokenizer, {**params, "encoder_model": str(tmp_path / "nope")})
    assert not Path(params["preprocess_cache_dir"]).exists()


def test_preprocess_cache_dir_must_match_the_catalog(decoder_tokenizer, params, shared_encoder, tmp_path, monkeypatch):
    """Set (seed 004), preprocess_cache_dir must be the catalog path's parent: a mismatch is an
    error naming both, raised before anything is encoded or written; null leaves it to the catalog."""
    monkeypatch.setattr(Encoder, "encode_ids", lambda *a, **k: pytest.fail("encoded before the check"))
    build = nodes.cache_pairs({"dialogue_summary": PAIRS}, decoder_tokenizer, params, {})
    with pytest.raises(
        DatasetError, match=r"preprocess_cache_dir is .*/cache but the catalog writes the pairs cache to .*/a/pairs"
    ):
        EmbeddingCacheDataset(str(tmp_path / "a" / "pairs")).save(build)
    assert not (tmp_path / "a").exists()


def test_dataset_round_trip_and_moved_project(decoder_tokenizer, params, shared_encoder, tmp_path):
    build = nodes.cache_pairs(
        {"dialogue_summary": PAIRS}, decoder_tokenizer, {**params, "preprocess_cache_dir": None}, {}
    )
    ds = EmbeddingCacheDataset(str(tmp_path / "a" / "pairs"))
    ds.save(build)
    assert json.loads((tmp_path / "a" / "pairs" / "manifest.json").read_text())["fingerprint"] == build.fingerprint
    shutil.move(tmp_path / "a", tmp_path / "b")  # the cache holds no absolute path
    loaded = EmbeddingCacheDataset(str(tmp_path / "b" / "pairs")).load()
    assert len(loaded.train) + len(loaded.val) == 4 and loaded.train[0]["embedding"].shape == (384,)
