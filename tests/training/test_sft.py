"""SFT examples: chat template rendering, loss on assistant tokens only, block weights, padding,
batch source, and the weighted loss taking effect in the model and the training engine."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.training.finetune_helpers import chat_tokenizer, nano_model
from xoron_pipelines.tokens import block
from xoron_pipelines.training import TrainConfig, train
from xoron_pipelines.training.losses import BlockWeighter, LossWeights
from xoron_pipelines.training.sft import ExampleBatchSource, build_sft_dataset, build_sft_example, collate

THINK_OPEN, THINK_CLOSE = block("think")
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "two plus two?"},
    {"role": "assistant", "content": f"{THINK_OPEN}2 + 2{THINK_CLOSE}four"},
    {"role": "user", "content": "and five?"},
    {"role": "assistant", "content": "not sure"},
]


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    runs, start = [], None
    for i, v in enumerate(mask.tolist() + [False]):
        if v and start is None:
            start = i
        if not v and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_labels_cover_assistant_content_and_closing_tag_only():
    tok = chat_tokenizer()
    ex = build_sft_example(CONVERSATION, tok, max_len=256)
    ids, labels = ex["input_ids"], ex["labels"]
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]) == rendered
    target = labels != -100
    assert torch.equal(labels[target], ids[target])
    texts = [tok.decode(ids[a:b]) for a, b in _runs(target)]
    assert texts == [f"{THINK_OPEN}2 + 2{THINK_CLOSE}four\n<|/assistant|>", "not sure\n<|/assistant|>"]


def test_sft_loss_weights_follow_the_think_block():
    tok = chat_tokenizer()
    ex = build_sft_example(CONVERSATION, tok, max_len=256)
    ids = ex["input_ids"].tolist()
    a, b = ids.index(tok.convert_tokens_to_ids(THINK_OPEN)), ids.index(tok.convert_tokens_to_ids(THINK_CLOSE))
    expected = torch.ones(len(ids))
    expected[a : b + 1] = 1.5
    assert torch.equal(ex["loss_weights"], expected)
    weighter = BlockWeighter.from_tokenizer(tok, LossWeights(cot_loss_weight=3.0))
    heavier = build_sft_example(CONVERSATION, tok, 256, weighter)["loss_weights"]
    assert heavier[a : b + 1].eq(3.0).all() and heavier.sum() == len(ids) + 2 * (b - a + 1)


def test_truncation_and_dropping_conversations_without_targets():
    tok = chat_tokenizer()
    ex = build_sft_example(CONVERSATION, tok, max_len=20)
    full = build_sft_example(CONVERSATION, tok, max_len=256)
    assert len(ex["input_ids"]) == 20
    for key in ("input_ids", "labels", "loss_weights"):
        assert torch.equal(ex[key], full[key][:20])
    first_target = int((full["labels"] != -100).nonzero()[0])
    max_len = first_target + 2  # keeps two assistant tokens of CONVERSATION
    prompt_only = [{"role": "user", "content": "hello world " * 20}, {"role": "assistant", "content": "four"}]
    kept = build_sft_dataset([CONVERSATION, prompt_only], tok, max_len=max_len)
    assert len(kept) == 1 and torch.equal(kept[0]["labels"], full["labels"][:max_len])


def test_collate_pads_right_with_ignored_labels_and_zero_weights():
    a = {
        "input_ids": torch.tensor([5, 6, 7]),
        "labels": torch.tensor([-100, 6, 7]),
        "loss_weights": torch.tensor([1.0, 1.5, 1.0]),
    }
    b = {"input_ids": torch.tensor([8]), "labels": torch.tensor([8]), "loss_weights": torch.tensor([1.2])}
    batch = collate([a, b], pad_token_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert torch.equal(batch["loss_weights"], torch.tensor([[1.0, 1.5, 1.0], [1.2, 0.0, 0.0]]))
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert collate([b], pad_token_id=2, pad_to=4)["input_ids"].tolist() == [[8, 2, 2, 2]]


def test_example_batch_source_is_deterministic_and_covers_an_epoch():
    examples = [{"input_ids": torch.tensor([i])} for i in range(10)]
    src = ExampleBatchSource(examples, batch_size=3, collate_fn=lambda exs: collate(exs, 0), seed=7)
    assert len(src) == 3
    epoch0 = [src.batch(0, i)["input_ids"].flatten().tolist() for i in range(3)]
    assert len(set(sum(epoch0, []))) == 9
    assert src.batch(0, 1)["input_ids"].flatten().tolist() == epoch0[1]
    epoch1 = [src.batch(1, i)["input_ids"].flatten().tolist() for i in range(3)]
    assert epoch1 != epoch0
    again = ExampleBatchSource(examples, batch_size=3, collate_fn=lambda exs: collate(exs, 0), seed=7)
    assert again.batch(1, 2)["input_ids"].flatten().tolist() == epoch1[2]


def test_model_loss_is_the_block_weighted_mean_over_assistant_tokens():
    tok = chat_tokenizer()
    model = nano_model().eval()
    batch = collate(
        [build_sft_example(CONVERSATION, tok, 64), build_sft_example(CONVERSATION[:3], tok, 64)], tok.pad_token_id
    )
    with torch.no_grad():
        out = model(**batch)
        logits, labels, w = out.logits[:, :-1], batch["labels"][:, 1:], batch["loss_weights"][:, 1:]
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none", ignore_index=-100
        ).view_as(labels)
        valid = (labels != -100).float()
        expected = (ce * w * valid).sum() / (w * valid).sum()
        unweighted = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert not torch.allclose(out.loss, unweighted, atol=1e-4)  # the 1.5 on the think block changes the loss


def test_sft_trains_through_the_engine(tmp_path):
    tok = chat_tokenizer()
    examples = build_sft_dataset([CONVERSATION, CONVERSATION[:3]] * 2, tok, max_len=48)
    source = ExampleBatchSource(examples, batch_size=2, collate_fn=lambda exs: collate(exs, tok.pad_token_id))
    model = nano_model()
    batch = source.batch(0, 0)
    with torch.no_grad():
        before = float(model(**batch).loss)
    cfg = TrainConfig(max_steps=6, learning_rate=3e-3, lr_scheduler="constant", save_steps=100, logging_steps=1)
    result = train(model, source, cfg, ckpt_dir=tmp_path, progress=False)
    with torch.no_grad():
        after = float(model(**batch).loss)
    assert result.global_step == 6
    assert after < before - 0.5
