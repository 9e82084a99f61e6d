"""Perplexity and bits-per-byte: exp(mean NLL) and NLL / (ln 2 * bytes), checked by hand."""

from __future__ import annotations

import math

import pyarrow as pa
import torch
from eval_stubs import TableLM

from xoron_pipelines.datasets.parquet_shards import ParquetShardsDataset
from xoron_pipelines.evaluation import perplexity


def test_perplexity_equals_exp_mean_nll_of_the_logits(tiny_model):
    seqs = [[5, 17, 99, 3, 250, 8], [40, 41, 42], [7, 300, 12, 13]]
    result = perplexity.score(tiny_model, [(s, 10) for s in seqs], batch_size=2)
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in seqs:  # one sequence at a time: no padding involved
            logits = tiny_model(torch.tensor([s])).logits[0].double()
            for t in range(1, len(s)):
                nll -= float(torch.log_softmax(logits[t - 1], -1)[s[t]])
                count += 1
    assert result.tokens == count == 10 and result.sequences == 3 and result.bytes == 30
    assert math.isclose(result.nll, nll, rel_tol=1e-5)
    assert math.isclose(result.perplexity, math.exp(nll / count), rel_tol=1e-5)


def test_bits_per_byte_on_a_hand_case():
    vocab = 8
    table = torch.zeros(vocab, vocab)  # uniform: every token costs ln 8 nats = 3 bits
    table[1, 2] = math.log(3.0)  # after token 1: p(2) = 3 / 10
    model = TableLM(table)
    result = perplexity.score(model, [([1, 2, 5], 4)], batch_size=1)
    expected_nll = -math.log(3 / 10) + math.log(8)
    assert math.isclose(result.nll, expected_nll, rel_tol=1e-6)
    assert math.isclose(result.bits_per_byte, expected_nll / (math.log(2) * 4), rel_tol=1e-6)
    assert math.isclose(result.perplexity, math.exp(expected_nll / 2), rel_tol=1e-6)


def test_text_windows_score_every_token_once_and_count_exact_bytes(tiny_tokenizer):
    text = "def f(x):\n    return x + 1  # é\n" * 3
    ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer.encode(text, add_special_tokens=False)
    pieces = list(perplexity.text_pieces([text], tiny_tokenizer, max_length=8))
    assert len(ids) % 8 != 1  # the last window is partial: right-aligned, with context
    assert all(len(w) <= 9 for w, _, _ in pieces)  # 8 model inputs + the last target
    assert sum(len(w) - 1 - c for w, _, c in pieces) == len(ids) - 1
    assert sum(n for _, n, _ in pieces) == len(text.encode("utf-8"))
    assert [t for w, _, c in pieces for t in w[1 + c :]] == ids[1:]  # each id predicted once, in order
    *full, (last, _, context) = pieces
    assert [c for _, _, c in full] == [0] * len(full) and len(last) == 9 and context > 0
    assert last == ids[-9:]  # lm-evaluation-harness loglikelihood_rolling's last window


def test_packed_rows_score_real_tokens_with_their_decoded_bytes(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    body = tok.encode("return x + 1", add_special_tokens=False)
    ids = [tok.bos_token_id, *body, tok.eos_token_id]
    row = ids + [tok.pad_token_id] * (16 - len(ids))
    ds = ParquetShardsDataset(str(tmp_path / "val"))
    ds.save(
        pa.table(
            {
                "input_ids": pa.array([row, row], pa.list_(pa.int32())),
                "length": pa.array([len(ids), len(ids)], pa.int32()),
            }
        )
    )
    pieces = list(perplexity.packed_pieces(perplexity.iter_packed_rows(ds.load(), max_rows=1), tok))
    assert pieces == [(ids, len("return x + 1"))]


def test_padding_does_not_change_the_nll(tiny_model):
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10]]
    together = perplexity.score(tiny_model, [(s, 1) for s in seqs], batch_size=2)
    apart = [perplexity.score(tiny_model, [(s, 1)], batch_size=1) for s in seqs]
    assert math.isclose(together.nll, sum(r.nll for r in apart), rel_tol=1e-5)
