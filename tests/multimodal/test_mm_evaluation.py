"""Held-out scoring of multimodal stages: choice log-likelihoods (padding and offsets right),
greedy transcripts, WER, caption candidates, blind = no media passed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from mm_tables import image_table

from xoron_pipelines.evaluation.multimodal import (
    caption_items,
    choice_loglikelihoods,
    greedy_transcripts,
    multiple_choice,
    wer_figure,
)
from xoron_pipelines.model import XoronForCausalLM, get_config
from xoron_pipelines.training.multimodal import Item, ItemTokenizer, decode_media, items_of, split_rows


class Tok:
    """One id per character (4..), bos 1, eos 2, pad 0."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [4 + ord(c) % 60 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 4 + 60) if i - 4 < 37 else chr(i - 4) for i in ids if i >= 4)


class SeeingLM(torch.nn.Module):
    """A tiny LM; with ``images`` given, the logits of the ids ``hint`` are raised by 5 everywhere
    (so media can change the answer). Records whether media came."""

    def __init__(self, hint: list[int]) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = get_config("nano", vocab_size=70, num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
        self.llm = XoronForCausalLM(config).eval()
        self.hint, self.calls = hint, []

    def forward(self, input_ids, attention_mask=None, images=None, **_):
        self.calls.append(images is not None)
        logits = self.llm(input_ids=input_ids, attention_mask=attention_mask).logits
        if images is not None:
            logits = logits.clone()
            logits[..., torch.tensor(self.hint)] += 5.0
        return SimpleNamespace(logits=logits)


def _manual(model, ids: list[int], n_cont: int) -> float:
    logp = model.llm(input_ids=torch.tensor([ids])).logits.log_softmax(-1)[0]
    return sum(float(logp[t - 1, ids[t]].detach()) for t in range(len(ids) - n_cont, len(ids)))


def test_choice_loglikelihoods_match_one_row_at_a_time():
    model = SeeingLM(hint=[5])
    enc = ItemTokenizer(Tok(), "image", [60, 61, 61, 62])
    items = [
        Item(0, "vqa", "What colour?", "red", ("red", "green", "blue")),
        Item(1, "vqa", "Which shape is it?", "square", ("circle", "square")),
    ]
    media = [torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()] * 2
    lls = choice_loglikelihoods(model, enc, items, media, (8, 8), blind=True, batch_size=2)
    for item, scores in zip(items, lls):
        ctx = enc.context(item.prompt)
        for choice, score in zip(item.choices, scores):
            cont = enc.continuation(choice)
            assert math.isclose(score, _manual(model, ctx + cont, len(cont)), rel_tol=1e-4, abs_tol=1e-4)
    assert model.calls and not any(model.calls)  # blind: never any media
    model.calls.clear()
    choice_loglikelihoods(model, enc, items, media, (8, 8), blind=False, batch_size=2)
    assert all(model.calls)


def test_media_change_the_choice_and_blind_does_not_see_them():
    """The hint ids spell 'blue' (+ eos): with media the model picks blue every time."""
    model = SeeingLM(hint=[*Tok()("blue")["input_ids"], 2])
    enc = ItemTokenizer(Tok(), "image", [60, 61, 62])
    items = [Item(i, "vqa", f"Q{i}?", "blue", ("red", "green", "blue")) for i in range(5)]
    media = [torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()] * 5
    figures, predicted = multiple_choice(model, enc, items, media, (8, 8), batch_size=3)
    assert figures["with_media"]["correct"] == 5 and predicted == [2] * 5
    assert figures["blind"]["n"] == 5 and figures["blind"]["correct"] < 5
    assert figures["chance"] == pytest.approx(1 / 3)
    lo, hi = figures["with_media"]["ci95"]
    assert 0 < lo < 1 == hi


def test_greedy_transcripts_follow_the_argmax():
    model = SeeingLM(hint=[5])
    enc = ItemTokenizer(Tok(), "audio", [60, 61, 62])
    items = [Item(i, "transcribe", "Transcribe the audio.", "x") for i in range(3)]
    out = greedy_transcripts(model, enc, items, [None] * 3, blind=True, batch_size=2, max_new_tokens=4)
    ids = enc.context("Transcribe the audio.")
    gen = []
    for _ in range(4):
        nxt = int(model.llm(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == 2:
            break
        gen.append(nxt)
        ids = ids + [nxt]
    assert out == [enc.decode(gen)] * 3


def test_wer_and_caption_candidates():
    fig = wer_figure(["red circle", "one two three"], ["red square", "one two three"])
    assert fig["wer"] == pytest.approx(1 / 5) and fig["n"] == 2 and fig["words"] == 5
    assert fig["ci95"][0] <= fig["wer"] <= fig["ci95"][1]
    rows = split_rows(image_table(12, 0), "image", "train")
    caps = items_of(rows, "image", ["caption"])
    cands = caption_items(caps, 4, seed=0)
    assert cands == caption_items(caps, 4, seed=0)
    for item in cands:
        assert (
            len(set(item.choices)) == 4 and item.target in item.choices and list(item.choices) == sorted(item.choices)
        )
    with pytest.raises(ValueError, match="needs 40 distinct"):
        caption_items(caps, 40, seed=0)
    assert len(decode_media(rows)) == 12
