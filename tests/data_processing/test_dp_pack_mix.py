"""Weighted mixing, tokenize + pack: token conservation, packing modes, split, seed, knobs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from dp_helpers import jsonl_source, make_params, prose_docs, write_jsonl

from xoron_pipelines.data.ledger import build_ledger
from xoron_pipelines.data.mixing import MixSource, WeightedMixer
from xoron_pipelines.data.packing import BestFitPacker, ConcatPacker, tokenize_and_pack
from xoron_pipelines.datasets.parquet_shards import ParquetShardsDataset

# ----------------------------------------------------------------------------- mixer


@dataclass
class FakeDoc:
    source: str
    index: int
    num_tokens: int


def fake_source(name, n_docs, doc_len, weight, **kw):
    return MixSource(name, weight, lambda: (FakeDoc(name, i, doc_len) for i in range(n_docs)), **kw)


def run_mix(sources, **kw):
    mixer = WeightedMixer(sources, **kw)
    out = [(sources[i].name, d.index) for i, d in mixer]
    return out, mixer.report()


def test_mix_first_exhausted_hits_weights_without_repeats():
    out, rep = run_mix(
        [fake_source("a", 100, 10, 0.7), fake_source("b", 1000, 37, 0.3)], stopping_strategy="first_exhausted"
    )
    total = rep["a"]["tokens"] + rep["b"]["tokens"]
    assert rep["a"]["documents"] == 100 and rep["a"]["passes_completed"] == 1  # a ran out first
    assert len(set(out)) == len(out)  # nothing repeated
    for name, target in (("a", 0.7), ("b", 0.3)):
        assert rep[name]["target_share"] == pytest.approx(target)
        assert abs(rep[name]["achieved_share"] - target) <= 37 / total  # within one document


def test_mix_all_exhausted_cycles_small_sources():
    out, rep = run_mix(
        [fake_source("a", 10, 10, 0.5), fake_source("b", 100, 10, 0.5)], stopping_strategy="all_exhausted"
    )
    assert rep["b"]["documents"] == 100 and rep["b"]["passes_completed"] == 1
    assert rep["a"]["documents"] == 100 and rep["a"]["passes_completed"] == 10  # a re-read 10 times
    assert rep["a"]["achieved_share"] == pytest.approx(0.5)


def test_mix_sample_repeat_and_caps():
    _, rep = run_mix(
        [fake_source("a", 10, 10, 0.5, sample_repeat=3), fake_source("b", 10, 10, 0.5)],
        stopping_strategy="all_exhausted",
    )
    assert rep["a"]["passes_completed"] == 3 and rep["a"]["documents"] == 30
    _, rep = run_mix(
        [fake_source("a", 100, 10, 0.5, max_per_epoch=7), fake_source("b", 30, 10, 0.5)],
        stopping_strategy="all_exhausted",
    )
    assert rep["a"]["documents"] == 7 and rep["b"]["documents"] == 30  # a dropped out at its cap
    out, _ = run_mix([fake_source("a", 100, 10, 1.0), fake_source("b", 100, 10, 1.0)], max_total_docs=17)
    assert len(out) == 17


def test_mix_empty_source_dropped_and_deterministic():
    srcs = lambda: [fake_source("e", 0, 10, 0.5), fake_source("a", 5, 3, 0.25), fake_source("b", 5, 7, 0.25)]  # noqa: E731
    out1, rep = run_mix(srcs(), stopping_strategy="first_exhausted")
    out2, _ = run_mix(srcs(), stopping_strategy="first_exhausted")
    assert out1 == out2 and out1
    assert rep["e"]["documents"] == 0


# ----------------------------------------------------------------------------- packers


def docs_with_lengths(lengths, start=1000):
    out, nxt = [], start
    for n in lengths:
        out.append(np.arange(nxt, nxt + n, dtype=np.int32))
        nxt += n + 1  # a gap, so adjacent documents never form one run of consecutive ids
    return out


def run_packer(packer, docs):
    rows, lengths = [], []
    for d in docs:
        for r, l in packer.add(d):
            rows.append(r), lengths.append(l)
    for r, l in packer.finish():
        rows.append(r), lengths.append(l)
    return np.vstack(rows), np.concatenate(lengths)


def test_concat_packer_full_rows_and_conservation():
    docs = docs_with_lengths([5, 17, 3, 40, 9, 1, 22])
    rows, lengths = run_packer(ConcatPacker(16, pad_id=0, flush_rows=2), docs)
    assert rows.shape[1] == 16 and (lengths[:-1] == 16).all() and lengths[-1] == sum(map(len, docs)) % 16
    real = np.concatenate([r[:l] for r, l in zip(rows, lengths)])
    assert np.array_equal(real, np.concatenate(docs))  # order kept, every id once
    assert (rows[-1][lengths[-1] :] == 0).all()


def test_best_fit_packer_keeps_documents_whole_and_buffer_matters():
    rng = np.random.default_rng(0)
    lengths_in = rng.integers(1, 30, size=200).tolist() + [70]  # one longer than a row
    docs = docs_with_lengths(lengths_in)
    rows, lengths = run_packer(BestFitPacker(32, pad_id=0, buffer=64), docs)
    real = [r[:l] for r, l in zip(rows, lengths)]
    assert Counter(np.concatenate(real).tolist()) == Counter(np.concatenate(docs).tolist())
    assert all((r[l:] == 0).all() for r, l in zip(rows, lengths))
    pieces = {tuple(d.tolist()) for d in docs if len(d) <= 32}
    found = set()
    for r in real:  # a row is a concatenation of whole documents (ids are consecutive per doc)
        breaks = np.flatnonzero(np.diff(r) != 1) + 1
        found.update(tuple(p.tolist()) for p in np.split(r, breaks))
    assert pieces <= found
    n_rows_window = len(rows)
    rows_no_window, _ = run_packer(BestFitPacker(32, pad_id=0, buffer=1), docs)
    assert n_rows_window < len(rows_no_window)  # a bigger buffer packs tighter


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    long_docs = [" ".join([t] * 6) for t in prose_docs(40, seed=21)]  # some longer than a row
    a = write_jsonl(d / "a.jsonl", [{"text": t} for t in prose_docs(160, seed=20)])
    b = write_jsonl(d / "b.jsonl", [{"text": t} for t in long_docs])
    return [jsonl_source(a, name="a", weight=0.6), jsonl_source(b, name="b", weight=0.4, category="code")]


def pack(corpus, tokenizer, **packing):
    mixing = packing.pop("mixing", {"stopping_strategy": "first_exhausted"})
    seed = packing.pop("seed", 1)
    params = make_params(
        corpus,
        packing={"max_seq_len": 64} | packing,
        mixing=mixing,
        seed=seed,
        dedup={"exact": True, "near_dup": False},
    )
    ledger = build_ledger(params)
    train, val, manifest = tokenize_and_pack(ledger, tokenizer, params)
    return ledger, train, val, manifest, params


def real_rows(shards):
    t = shards.read()
    return [ids[:n] for ids, n in zip(t.column("input_ids").to_pylist(), t.column("length").to_pylist())]


def split_docs(rows, bos):
    """Documents (BOS..EOS runs) in rows, concatenated in order."""
    flat = [i for r in rows for i in r]
    starts = [k for k, i in enumerate(flat) if i == bos] + [len(flat)]
    return [tuple(flat[s:e]) for s, e in zip(starts, starts[1:])]


def whole_docs(row, bos, eos):
    """Complete BOS..EOS runs inside one row."""
    out, start = [], None
    for k, i in enumerate(row):
        if i == bos:
            start = k
        elif i == eos and start is not None:
            out.append(tuple(row[start : k + 1]))
            start = None
    return out


@pytest.mark.parametrize("mode", ["best_fit", "concat"])
def test_every_kept_token_exactly_once(corpus, trained_tokenizer, mode):
    tok = trained_tokenizer
    # one source over both files: no source is re-read to keep a weight, so each document once
    one = [jsonl_source(Path(corpus[0]["path"]).parent / "*.jsonl", name="all")]
    ledger, train, val, manifest, _ = pack(one, tok, packing=mode, preprocess_validation_fraction=0.2)
    kept = [r["text"] for r in ledger.read().to_pylist() if r["status"] == "kept"]
    expected = Counter((tok.bos_token_id, *tok.encode(t, add_special_tokens=False), tok.eos_token_id) for t in kept)
    rows = real_rows(train) + real_rows(val)
    # every id of every kept document (with its BOS/EOS) once across train + val
    assert Counter(i for r in rows for i in r) == Counter(i for d in expected.elements() for i in d)
    if mode == "concat":  # rows are cut from one stream: re-joined, the documents come back whole
        got = Counter(split_docs(real_rows(train), tok.bos_token_id) + split_docs(real_rows(val), tok.bos_token_id))
        assert got == expected
    else:  # best-fit: a document that fits a row is never cut
        segments = Counter(seg for r in rows for seg in whole_docs(r, tok.bos_token_id, tok.eos_token_id))
        short = Counter({d: n for d, n in expected.items() if len(d) <= 64})
        assert short and all(segments[d] >= n for d, n in short.items())
    assert all(len(r) <= 64 for r in rows)
    full = train.read()
    assert set(map(len, full.column("input_ids").to_pylist())) == {64}
    pads = [ids[n:] for ids, n in zip(full.column("input_ids").to_pylist(), full.column("length").to_pylist())]
    assert all(set(p) <= {tok.pad_token_id} for p in pads)
    s = manifest["splits"]
    assert s["train"]["tokens"] + s["val"]["tokens"] == sum(len(d) for d in expected.elements())
    assert s["train"]["sequences"] == train.num_rows and s["val"]["sequences"] == val.num_rows
    assert s["val"]["documents"] > 0 and s["train"]["documents"] > 0
    if mode == "concat":
        assert full.column("length").to_pylist()[:-1] == [64] * (train.num_rows - 1)


def test_mix_weights_in_manifest(corpus, trained_tokenizer):
    *_, manifest, _ = pack(corpus, trained_tokenizer, mixing={"stopping_strategy": "all_exhausted"})
    src = manifest["sources"]
    for name, target in (("a", 0.6), ("b", 0.4)):
        assert src[name]["target_share"] == pytest.approx(target)
        assert src[name]["achieved_share"] == pytest.approx(target, abs=0.02)
    assert manifest["chars_per_token"] > 1.5


def test_validation_fraction_and_seed(corpus, trained_tokenizer):
    tok = trained_tokenizer
    *_, m0, _ = pack(corpus, tok, preprocess_validation_fraction=0.0)
    assert m0["splits"]["val"]["documents"] == 0
    _, t1, v1, m1, _ = pack(corpus, tok, preprocess_validation_fraction=0.3, seed=1)
    n = m1["splits"]["train"]["documents"] + m1["splits"]["val"]["documents"]
    assert 0.18 < m1["splits"]["val"]["documents"] / n < 0.42
    _, t1b, v1b, _, _ = pack(corpus, tok, preprocess_validation_fraction=0.3, seed=1)
    assert t1.read().equals(t1b.read()) and v1.read().equals(v1b.read())  # deterministic
    _, _, v2, _, _ = pack(corpus, tok, preprocess_validation_fraction=0.3, seed=2)
    assert set(split_docs(real_rows(v1), tok.bos_token_id)) != set(split_docs(real_rows(v2), tok.bos_token_id))


def test_seq_len_shards_npy_and_batch_size(corpus, trained_tokenizer, tmp_path: Path):
    tok = trained_tokenizer
    _, train, _, m, _ = pack(corpus, tok, max_seq_len=32, rows_per_shard=50, export_npy=True)
    t = train.read()
    assert set(map(len, t.column("input_ids").to_pylist())) == {32}
    assert len(train.files) == -(-train.num_rows // 50) > 1
    arr = np.load(train.path / "tokens.npy")
    assert arr.dtype == np.int32 and arr.shape == (train.num_rows, 32)
    assert np.array_equal(arr, np.array(t.column("input_ids").to_pylist(), dtype=np.int32))
    assert m["npy"] == ["tokens.npy"]
    # the dataset moves the staged directory into place, npy included
    ParquetShardsDataset(str(tmp_path / "train")).save(train)
    assert (tmp_path / "train" / "tokens.npy").is_file() and not train.path.exists()

    class Counting:
        """Tokenizer stand-in that counts encode_batch_fast calls."""

        def __init__(self, inner):
            self.inner, self.calls = inner, 0
            self.backend_tokenizer = self
            self.bos_token_id, self.eos_token_id, self.pad_token_id = (
                inner.bos_token_id,
                inner.eos_token_id,
                inner.pad_token_id,
            )

        def encode_batch_fast(self, texts, add_special_tokens):
            self.calls += 1
            return self.inner.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=add_special_tokens)

        def __len__(self):
            return len(self.inner)

    small, big = Counting(tok), Counting(tok)
    _, ts, _, _, _ = pack(corpus, small, preprocess_batch_size=8)
    _, tb, _, _, _ = pack(corpus, big, preprocess_batch_size=512)
    assert ts.read().equals(tb.read())  # same output ...
    assert small.calls > big.calls  # ... in fewer, larger encode calls


def test_cached_source_replays_small_sources_only():
    from xoron_pipelines.data.packing import CachedSource

    calls = []

    def open_pass():
        calls.append(1)
        return (FakeDoc("s", i, 10) for i in range(5))

    small = CachedSource(open_pass, max_tokens=100)
    passes = [[d.index for d in small()] for _ in range(3)]
    assert passes == [[0, 1, 2, 3, 4]] * 3 and len(calls) == 1  # read once, replayed twice
    calls.clear()
    big = CachedSource(open_pass, max_tokens=20)
    assert [[d.index for d in big()] for _ in range(3)] == passes and len(calls) == 3  # re-read


# ----------------------------------------------------------------------------- stage mixes


def test_stage_mix_packs_its_sources_with_its_weights_and_the_same_split(corpus, trained_tokenizer, tmp_path):
    from xoron_pipelines.datasets.parquet_shards import PackedMixesDataset, ShardSet

    tok = trained_tokenizer
    params = make_params(
        corpus,
        packing={"max_seq_len": 64, "packing": "concat", "preprocess_validation_fraction": 0.3},
        mixing={"stopping_strategy": "all_exhausted"},
        seed=1,
        dedup={"exact": True, "near_dup": False},
        stage_mixes={"only_b": {"b": 1.0}, "flipped": {"a": 0.3, "b": 0.7}},
    )
    ledger = build_ledger(params)
    cache: dict = {}
    main_train, main_val, main = tokenize_and_pack(ledger, tok, params, cache=cache)
    b_train, b_val, only_b = tokenize_and_pack(ledger, tok, params, weights={"b": 1.0}, cache=cache)
    f_train, f_val, flipped = tokenize_and_pack(ledger, tok, params, weights={"a": 0.3, "b": 0.7}, cache=cache)
    assert list(only_b["sources"]) == ["b"] and only_b["sources"]["b"]["passes_completed"] == 1
    for name, target in (("a", 0.3), ("b", 0.7)):  # the mix's weights, not the sources' own 0.6 / 0.4
        assert flipped["sources"][name]["target_share"] == pytest.approx(target)
        assert flipped["sources"][name]["achieved_share"] == pytest.approx(target, abs=0.02)
    assert main["sources"]["a"]["target_share"] == pytest.approx(0.6)
    # a document is on the same side of the split in every packing of the ledger
    bos = tok.bos_token_id
    b_docs = set(split_docs(real_rows(b_train) + real_rows(b_val), bos))
    main_val_docs = set(split_docs(real_rows(main_val), bos))
    assert set(split_docs(real_rows(b_val), bos)) == main_val_docs & b_docs != set()
    assert not set(split_docs(real_rows(b_train), bos)) & main_val_docs
    # the dataset stores every mix under its name, atomically replacing the earlier set
    ds = PackedMixesDataset(str(tmp_path / "mixes"))
    ds.save({"only_b": {"train": b_train, "val": b_val}, "flipped": {"train": f_train, "val": f_val}})
    loaded = ds.load()
    assert loaded.names() == ["flipped", "only_b"]
    assert loaded["only_b"]["train"].num_rows == only_b["splits"]["train"]["sequences"]
    kept = {"train": ShardSet(main_train.path), "val": ShardSet(main_val.path)}  # not staged: copied
    ds.save({"only_b": kept})
    assert ds.load().names() == ["only_b"] and main_train.path.exists()
    assert ds.load()["only_b"]["train"].read().equals(main_train.read())
    with pytest.raises(Exception, match="no packed mix 'flipped'.*stage_mixes"):
        ds.load()["flipped"]


@pytest.mark.parametrize(
    "mixes, message",
    [
        (
            {"m": {"a": 1.0, "nope": 1.0}},
            r"stage_mixes.m: \['nope'\] are not selected sources.*stage_mixes: \{m: \{nope: null\}\}.*"
            r"--params data_processing.stage_mixes.m.nope=null",
        ),
        ({"m": {}}, "at least one source"),
        ({"m": {"a": None}}, "at least one source"),
        ({"m": {"a": 0.0}}, "weights must be > 0"),
        ({"../m": {"a": 1.0}}, "folder name"),
    ],
)
def test_bad_stage_mixes_are_rejected_naming_the_mix(corpus, mixes, message):
    with pytest.raises(Exception, match=message):
        make_params(corpus, stage_mixes=mixes)


def test_stage_mix_null_weights_and_fallback(corpus):
    """A null weight drops a source from a mix (how a conf/local file, merged key by key, removes
    one); a mix naming none of the selected sources falls back to all of them at their own
    weights (flagged); `stage_mixes: null` means no mix."""
    params = make_params(corpus, stage_mixes={"drop": {"a": 1.0, "b": None}, "gone": {"x": 1.0, "y": 2.0}})
    mixes = params.stage_mix_weights()
    assert mixes["drop"] == ({"a": 1.0}, False)
    assert mixes["gone"] == ({s.name: s.weight for s in params.selected_sources()}, True)
    assert set(mixes["gone"][0]) == {"a", "b"}
    assert make_params(corpus, stage_mixes=None).stage_mix_weights() == {}


def test_a_weight_far_above_the_natural_share_warns_naming_the_source(corpus, trained_tokenizer, caplog):
    params = make_params(
        corpus,
        packing={"max_seq_len": 64},
        mixing={"stopping_strategy": "all_exhausted"},
        dedup={"exact": True, "near_dup": False},
    )
    ledger = build_ledger(params)
    with caplog.at_level("WARNING", logger="xoron_pipelines.data.packing"):
        *_, fair = tokenize_and_pack(ledger, trained_tokenizer, params, desc="fair")
        *_, skewed = tokenize_and_pack(ledger, trained_tokenizer, params, weights={"a": 0.97, "b": 0.03}, desc="skewed")
    assert max(r["passes_completed"] for r in fair["sources"].values()) <= 3
    assert skewed["sources"]["a"]["passes_completed"] > 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("skewed: sources repeated") and "a: " in warnings[0]
