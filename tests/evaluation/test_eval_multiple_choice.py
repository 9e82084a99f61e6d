"""Multiple choice: lm-evaluation-harness acc / acc_norm / mc2 on hand-controlled log-likelihoods."""

from __future__ import annotations

import math

import pytest
import torch

from xoron_pipelines.evaluation import multiple_choice as mc
from xoron_pipelines.evaluation.lm import LoglikelihoodRequest, encode_pair, loglikelihoods


def fixed(lls_by_continuation):
    return lambda requests: [lls_by_continuation[cont] for _, cont in requests]


def test_acc_takes_the_highest_ll_and_acc_norm_divides_by_length():
    item = mc.MCItem("ctx", ("a", "bbbb"), gold=1)
    summary, records = mc.evaluate([item], fixed({" a": -2.0, " bbbb": -4.0}))
    # acc: -2 > -4 -> choice 0 (wrong); acc_norm: -2/1 < -4/4 -> choice 1 (right)
    assert summary == {"acc": 0.0, "acc_norm": 1.0, "n": 1.0, "chance": 0.5}
    assert records[0]["pred"] == 0 and records[0]["loglikelihoods"] == [-2.0, -4.0]


def test_acc_norm_unit_chars_vs_bytes():
    item = mc.MCItem("ctx", ("éé", "abc"), gold=0)  # 2 chars / 4 bytes vs 3 chars / 3 bytes
    lls = [-3.0, -4.0]
    assert mc.score_item(item, lls, "chars")["acc_norm"] == 0.0  # -1.5 < -1.333
    assert mc.score_item(item, lls, "bytes")["acc_norm"] == 1.0  # -0.75 > -1.333


def test_mc2_is_the_normalised_probability_of_the_true_choices():
    item = mc.MCItem("q", ("t1", "f1", "t2"), gold=0, labels=(1, 0, 1))
    got = mc.score_item(item, [math.log(0.2) - 50, math.log(0.3) - 50, math.log(0.5) - 50])
    assert math.isclose(got["mc2"], 0.7, rel_tol=1e-12)


def test_means_over_items():
    items = [mc.MCItem("c", ("x", "y"), gold=g) for g in (0, 0, 1)]
    summary, _ = mc.evaluate(items, fixed({" x": -1.0, " y": -2.0}))
    assert math.isclose(summary["acc"], 2 / 3) and summary["n"] == 3.0


def test_encode_pair_moves_trailing_spaces_to_the_continuation(tiny_tokenizer):
    tok = tiny_tokenizer
    req = encode_pair(tok, "Question: what is 2 plus 2? Answer: ", "4.", bos_id=tok.bos_token_id)
    whole = tok.encode("Question: what is 2 plus 2? Answer: 4.", add_special_tokens=False)
    ctx = tok.encode("Question: what is 2 plus 2? Answer:", add_special_tokens=False)
    assert req.context == (tok.bos_token_id, *ctx) and req.continuation == tuple(whole[len(ctx) :])


def test_loglikelihoods_sum_the_continuation_token_logprobs(tiny_model):
    reqs = [LoglikelihoodRequest((0, 5, 6), (7, 8)), LoglikelihoodRequest((0,), (9, 10, 11, 12))]
    got = loglikelihoods(tiny_model, reqs, batch_size=2, max_length=64)
    for (ll, greedy), r in zip(got, reqs):
        seq = list(r.context + r.continuation)
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(torch.tensor([seq])).logits[0].double(), -1)
        positions = range(len(r.context), len(seq))
        assert math.isclose(ll, sum(float(logp[t - 1, seq[t]]) for t in positions), rel_tol=1e-5)
        assert greedy == all(int(logp[t - 1].argmax()) == seq[t] for t in positions)


def test_long_inputs_keep_their_last_tokens_like_the_harness(tiny_model):
    req = LoglikelihoodRequest(tuple(range(3, 23)), (30, 31))
    ((ll, _),) = loglikelihoods(tiny_model, [req], batch_size=1, max_length=8)
    seq = list(req.context + req.continuation)[-9:]  # max_length + 1 tokens, the last one not fed
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(torch.tensor([seq[:-1]])).logits[0].double(), -1)
    assert math.isclose(ll, float(logp[6, 30] + logp[7, 31]), rel_tol=1e-5)


def test_a_continuation_longer_than_the_model_positions_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="does not fit"):
        loglikelihoods(tiny_model, [LoglikelihoodRequest((0,), tuple(range(1, 11)))], batch_size=1, max_length=8)
