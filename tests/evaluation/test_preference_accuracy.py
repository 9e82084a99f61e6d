"""Held-out preference accuracy: per-pair log-probs against a by-hand sum, the implicit-reward and
margin accuracies against hand-counted ones, the reference row, Wilson intervals, disjointness of
the held-out pairs from the training pairs, and the DPO stage and evaluation node reporting them."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.pipelines_training.stage_helpers import preference_rows, stage
from tests.training.finetune_helpers import chat_tokenizer, nano_model
from xoron_pipelines.evaluation import preference
from xoron_pipelines.pipelines.evaluation import nodes as eval_nodes
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training import stage_data, user_data
from xoron_pipelines.training.dpo import build_preference_example, make_reference, pair_logps
from xoron_pipelines.training.schema import StageParams

PAIRS = [
    ("two plus two?", "four", "five"),
    ("is it hello?", "hello world", "not sure"),
    ("three?", "add(a, b)", "think step by step"),
    ("say hi", "hello", "I am not sure. Let me think."),
    ("sum?", "a + b", "the answer is five"),
]


def _examples(tok):
    return [build_preference_example(p, c, r, tok, 64) for p, c, r in PAIRS]


def _by_hand(model, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum of log p(label_t | ids_<t) of one unpadded row, token by token."""
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0].double()
    total = 0.0
    for t in range(1, len(ids)):
        if labels[t] != -100:
            total += float(torch.log_softmax(logits[t - 1], -1)[labels[t]])
    return total


def test_pair_logps_and_accuracies_match_a_by_hand_count():
    tok = chat_tokenizer()
    examples = _examples(tok)
    policy, reference = nano_model(vocab_size=512, seed=1).eval(), nano_model(vocab_size=512, seed=2).eval()
    hand = {}
    for name, model in (("policy", policy), ("reference", reference)):
        got = pair_logps(model, examples, 2, tok.pad_token_id)  # padded batches of 2, the last of 1
        want = [
            [_by_hand(model, ex[f"{side}_input_ids"], ex[f"{side}_labels"]) for ex in examples]
            for side in ("chosen", "rejected")
        ]
        assert torch.allclose(got[0].double(), torch.tensor(want[0], dtype=torch.float64), atol=1e-4)
        assert torch.allclose(got[1].double(), torch.tensor(want[1], dtype=torch.float64), atol=1e-4)
        hand[name] = want
    beta = 0.3
    (pc, pr), (rc, rr) = hand["policy"], hand["reference"]
    implicit = sum(beta * (pc[i] - rc[i]) > beta * (pr[i] - rr[i]) for i in range(len(PAIRS)))
    result = preference.preference_accuracy(policy, reference, examples, beta, 2, tok.pad_token_id)
    assert result["n"] == len(PAIRS)
    assert result["policy"]["implicit_reward_accuracy"]["correct"] == implicit
    assert result["policy"]["margin_accuracy"]["correct"] == sum(pc[i] > pr[i] for i in range(len(PAIRS)))
    assert result["reference"]["margin_accuracy"]["correct"] == sum(rc[i] > rr[i] for i in range(len(PAIRS)))
    fig = result["reference"]["margin_accuracy"]
    assert (fig["ci_low"], fig["ci_high"]) == preference.wilson_interval(fig["correct"], len(PAIRS))
    assert {r["metric"] for r in preference.comparison_rows(result)} == {
        "preference_accuracy.implicit_reward_accuracy",
        "preference_accuracy.margin_accuracy",
    }


def test_the_reference_against_itself_has_no_implicit_preference():
    tok = chat_tokenizer()
    model = nano_model(vocab_size=512).eval()
    result = preference.preference_accuracy(model, make_reference(model), _examples(tok), 0.1, 3, tok.pad_token_id)
    assert result["policy"]["implicit_reward_accuracy"]["correct"] == 0  # every reward is 0: ties count as wrong
    assert result["policy"]["margin_accuracy"] == result["reference"]["margin_accuracy"]


def test_wilson_interval_known_values():
    lo, hi = preference.wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert preference.wilson_interval(0, 20)[0] == 0.0 and preference.wilson_interval(20, 20)[1] == 1.0
    lo, hi = preference.wilson_interval(50, 100)
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - lo == pytest.approx(0.1922, abs=1e-3)
    with pytest.raises(ValueError, match="n > 0"):
        preference.wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        preference.wilson_interval(11, 10)


def test_held_out_pairs_are_the_stages_validation_split_and_disjoint_from_training():
    tok = chat_tokenizer()
    synth = {"preference": lambda: preference_rows(30)}
    params = StageParams.model_validate(stage("/unused", sources=["preference"], beta=0.1, max_seq_len=64)).check_kind(
        "dpo"
    )
    held = preference.held_out_pairs(params, tok, synth, 64)
    data = user_data.load_chat_data("p", "dpo", params.sources, synth, tok, 64, params.train.seed)
    train, val = stage_data.chat_split(data, params.sources, params.eval.val_fraction, None, params.train.seed)
    key = lambda ex: tuple(ex["chosen_input_ids"].tolist())  # noqa: E731
    assert [key(e) for e in held] == [key(e) for e in val] and len(held) == 6  # 20% of 30
    assert not {key(e) for e in held} & {key(e) for e in train}
    assert len(held) + len(train) == 30


def test_dpo_stage_and_evaluation_node_report_the_held_out_accuracy(tmp_path):
    tok = chat_tokenizer()
    synth = {"preference": lambda: preference_rows(40)}
    params = stage(
        tmp_path / "ck",
        sources=["preference"],
        beta=0.1,
        max_seq_len=64,
        train={"max_steps": 8, "learning_rate": 3e-3, "batch_size": 8},
        eval={"max_batches": None, "batch_size": 8, "val_fraction": 0.2},
    )
    start = nano_model(vocab_size=len(tok))
    trained, summary = nodes.train_dpo(copy.deepcopy(start), tok, synth, params, stage="preference")
    assert summary["eval_pref_n"] == 8 == summary["val_pairs"]
    result = eval_nodes.evaluate_preference(
        trained, start, tok, synth, params, {"device": "cpu", "eval_batch_size": 4}, None
    )
    pol, ref = result["policy"], result["reference"]["margin_accuracy"]
    assert result["n"] == 8
    # the node and the stage's final evaluation count the same held-out pairs the same way
    assert pol["implicit_reward_accuracy"]["value"] == pytest.approx(summary["eval_pref_implicit_reward_accuracy"])
    assert pol["margin_accuracy"]["value"] == pytest.approx(summary["eval_pref_policy_margin_accuracy"])
    assert ref["value"] == pytest.approx(summary["eval_pref_reference_margin_accuracy"])
    # eight DPO steps on this easy data: every held-out pair's implicit reward now favours the chosen answer
    assert pol["implicit_reward_accuracy"]["correct"] == 8
    assert [r["metric"] for r in result["rows"]] == [
        "preference_accuracy.implicit_reward_accuracy",
        "preference_accuracy.margin_accuracy",
    ]
