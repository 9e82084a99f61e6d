"""The trained tokenizer: round trips, special tokens, AutoTokenizer + chat template, knobs."""

from __future__ import annotations

import pytest
from dp_helpers import prose_docs

from xoron_pipelines.data import tokenizer_training
from xoron_pipelines.tokens import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    all_special_tokens,
    render_chat,
    strip_hidden_tokens,
)

SAMPLES = [
    "def f(x):\n    return x ** 2  # square\n",
    "Unicode: café, naïve, 東京, emoji 🎉, tabs\tand\nnewlines",
    "   leading and trailing spaces   ",
    '### Code: <tool_call>{"name": "ls"}</tool_call> ### End',
]


def test_special_tokens_one_id_each(trained_tokenizer):
    tok = trained_tokenizer
    specials = tokenizer_training.special_tokens()
    assert len(specials) == len(set(specials)) == len(set(all_special_tokens()))
    ids = [tok.encode(t, add_special_tokens=False) for t in specials]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(specials)  # distinct ids
    assert [i[0] for i in ids] == list(range(len(specials)))  # registry order, first ids
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN)
    assert set(specials) <= set(tok.all_special_tokens)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_text(trained_tokenizer, text):
    ids = trained_tokenizer.encode(text, add_special_tokens=False)
    assert trained_tokenizer.decode(ids) == text


def test_round_trip_special_tokens_in_text(trained_tokenizer):
    tok = trained_tokenizer
    specials = tokenizer_training.special_tokens()
    text = "x".join(specials)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert sum(1 for i in ids if i < len(specials)) == len(specials)
    hidden = "<|think|>secret plan<|/think|>The answer is 4."
    assert strip_hidden_tokens(tok.decode(tok.encode(hidden, add_special_tokens=False))) == "The answer is 4."


def test_chat_template_exact(trained_tokenizer):
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there."},
    ]
    tok = trained_tokenizer
    assert tok.chat_template == CHAT_TEMPLATE
    expected = (
        "<|system|>\nYou are a helpful assistant.\n<|/system|>\n"
        "<|user|>\nHello!\n<|/user|>\n"
        "<|assistant|>\nHi there.\n<|/assistant|>\n"
    )
    assert tok.apply_chat_template(msgs, tokenize=False) == expected == render_chat(msgs)
    gen = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert gen.endswith("<|/user|>\n<|assistant|>\n") and gen == render_chat(msgs[:2], add_generation_prompt=True)
    ids = tok.apply_chat_template(msgs[:2], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert tok.decode(ids) == render_chat(msgs[:2])


def test_autotokenizer_loads_offline(trained_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    trained_tokenizer.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert again.encode(SAMPLES[0], add_special_tokens=False) == trained_tokenizer.encode(
        SAMPLES[0], add_special_tokens=False
    )
    assert len(again) == len(trained_tokenizer) <= 8000
    assert again.get_vocab() == trained_tokenizer.get_vocab()


def test_vocab_size_min_frequency_and_char_cap():
    import random

    rng = random.Random(3)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9))) for _ in range(6000)]
    texts = prose_docs(200, seed=5) + [" ".join(words[i : i + 20]) for i in range(0, len(words), 20)] * 2

    def size(**kw):
        args = {"vocab_size": 8000, "min_frequency": 1} | kw
        max_chars = args.pop("max_chars", None)
        tok = tokenizer_training.train_bpe(tokenizer_training.capped(texts, max_chars), **args)
        return tok.get_vocab_size()

    full = size()
    assert full == 8000
    assert size(vocab_size=8500) > full  # the corpus has enough distinct pairs to go further
    assert size(min_frequency=50) < full  # rare merges are refused
    assert size(max_chars=2000) < full  # fewer characters seen, fewer merges possible
    assert list(tokenizer_training.capped(["abcd", "efgh"], 6)) == ["abcd", "ef"]
