"""DPO: the loss against hand-computed values, log 2 at the reference, implicit rewards scaling
with beta, and a few engine steps raising the chosen-vs-rejected margin with a frozen reference."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from tests.training.finetune_helpers import chat_tokenizer, nano_model
from xoron_pipelines.training import TrainConfig, train
from xoron_pipelines.training.dpo import (
    DPOSettings,
    build_preference_example,
    dpo_loss,
    dpo_step_loss,
    make_dpo_loss_fn,
    make_reference,
    sequence_logps,
)
from xoron_pipelines.training.sft import ExampleBatchSource, collate

PAIRS = [
    ("two plus two?", "four", "five"),
    ("is it hello?", "hello world", "not sure"),
    ("three?", "add(a, b)", "think step"),
]


def _batch(tok, pairs=PAIRS):
    return collate([build_preference_example(p, c, r, tok, 64) for p, c, r in pairs], tok.pad_token_id)


def test_dpo_loss_hand_computed():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # pair 1: rewards 0.5 / -0.5, margin 1 -> log(1 + e^-1); pair 2: rewards 0 / 0.5, margin -0.5 -> log(1 + e^0.5)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert m == pytest.approx(
        {"rewards/chosen": 0.25, "rewards/rejected": 0.0, "rewards/margins": 0.25, "rewards/accuracies": 0.5}
    )


def test_beta_scales_the_implicit_rewards():
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]))
    _, small = dpo_loss(*args, beta=0.1)
    _, large = dpo_loss(*args, beta=0.3)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert large[key] == pytest.approx(3 * small[key])
    assert small["rewards/chosen"] == pytest.approx(0.1) and small["rewards/rejected"] == pytest.approx(-0.05)
    with pytest.raises(ValueError):
        dpo_loss(*args, beta=0.0)
    with pytest.raises(ValueError):
        DPOSettings(beta=-0.1)
    assert DPOSettings().beta == 0.1


def test_preference_example_labels_the_answer_only():
    tok = chat_tokenizer()
    ex = build_preference_example("two plus two?", "four", "five", tok, 64)
    for side, answer in (("chosen", "four"), ("rejected", "five")):
        ids, labels = ex[f"{side}_input_ids"], ex[f"{side}_labels"]
        assert tok.decode(ids[1:]) == tok.apply_chat_template(
            [{"role": "user", "content": "two plus two?"}, {"role": "assistant", "content": answer}], tokenize=False
        )
        assert tok.decode(labels[labels != -100]) == f"{answer}\n<|/assistant|>"


def test_sequence_logps_sums_response_token_logprobs():
    tok = chat_tokenizer()
    batch = _batch(tok)
    model = nano_model().eval()
    with torch.no_grad():
        got = sequence_logps(model, batch["chosen_input_ids"], batch["chosen_labels"], batch["chosen_attention_mask"])
        for row in range(len(PAIRS)):
            n = int(batch["chosen_attention_mask"][row].sum())
            ids, labels = batch["chosen_input_ids"][row, :n], batch["chosen_labels"][row, :n]
            logits = model(input_ids=ids[None]).logits[0]
            expected = -F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
            assert float(got[row]) == pytest.approx(float(expected), rel=1e-5)


def test_loss_is_log2_when_policy_equals_reference():
    tok = chat_tokenizer()
    policy = nano_model("nano-moe-mla", aux_loss_coef=0.0)
    loss, metrics = dpo_step_loss(policy.eval(), make_reference(policy), _batch(tok), beta=0.1)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_dpo_steps_raise_the_margin_and_leave_the_reference_untouched(tmp_path):
    tok = chat_tokenizer()
    policy = nano_model()
    reference = make_reference(policy)
    ref_state = {k: v.clone() for k, v in reference.state_dict().items()}
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    examples = [build_preference_example(p, c, r, tok, 64) for p, c, r in PAIRS]
    source = ExampleBatchSource(examples, batch_size=3, collate_fn=partial(collate, pad_token_id=tok.pad_token_id))
    loss_fn = make_dpo_loss_fn(reference, beta=0.1)
    batch = source.batch(0, 0)
    with torch.no_grad():
        before = dpo_step_loss(policy, reference, batch, 0.1)
    cfg = TrainConfig(max_steps=8, learning_rate=2e-3, lr_scheduler="constant", save_steps=100, logging_steps=1)
    train(policy, source, cfg, ckpt_dir=tmp_path, loss_fn=loss_fn, progress=False)
    with torch.no_grad():
        loss, after = dpo_step_loss(policy, reference, batch, 0.1)
    assert before[1]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert after["rewards/margins"] > 1.0 and after["rewards/accuracies"] == 1.0
    assert float(loss) < 0.3
    assert set(loss_fn.last_metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(v, ref_state[k]) for k, v in reference.state_dict().items())
