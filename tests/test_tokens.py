"""The special-token registry, chat template, hidden-token stripping and loss blocks."""

from __future__ import annotations

import jinja2
import pytest

from xoron_pipelines import tokens
from xoron_pipelines.tokens import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    HIDDEN_TOKENS,
    LOSS_BLOCK_PAIRS,
    LOSS_BLOCKS,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TOKEN_GROUPS,
    UNK_TOKEN,
    all_special_tokens,
    get_reasoning_tokens,
    render_chat,
    strip_hidden_tokens,
)

# name -> token exactly as listed in the Xoron-Dev configuration reference (seed 000)
SEED_000 = {
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "pad": "<|pad|>",
    "prompt_start": "<|prompt|>",
    "response_start": "<|response|>",
    "system_start": "<|system|>",
    "user_start": "<|user|>",
    "assistant_start": "<|assistant|>",
    "memory_start": "<|memory|>",
    "working_memory_start": "<|working_memory|>",
    "summary_start": "<|summary|>",
    "fim_prefix": "<|fim_prefix|>",
    "fim_middle": "<|fim_middle|>",
    "fim_suffix": "<|fim_suffix|>",
    "commit_before": "<|commit_before|>",
    "commit_after": "<|commit_after|>",
    "diff_start": "<|diff|>",
    "diff_add": "<|diff_add|>",
    "diff_del": "<|diff_del|>",
    "jupyter_code": "<|jupyter_code|>",
    "jupyter_output": "<|jupyter_output|>",
    "exec_start": "<|exec|>",
    "exec_result": "<|exec_result|>",
    "exec_error": "<|exec_error|>",
    "add_file": "<|add_file|>",
    "delete_file": "<|delete_file|>",
    "edit_file": "<|edit_file|>",
    "read_file": "<|read_file|>",
    "think_start": "<|think|>",
    "think_end": "<|/think|>",
    "plan_start": "<|plan|>",
    "step": "<|step|>",
    "verify": "<|verify|>",
    "uncertain": "<|uncertain|>",
    "confident": "<|confident|>",
    "needs_verification": "<|needs_verify|>",
    "idk": "<|idk|>",
    "image_start": "<|image|>",
    "video_start": "<|video|>",
    "audio_start": "<|audio|>",
    "gen_image": "<|gen_image|>",
    "gen_video": "<|gen_video|>",
    "gen_audio": "<|gen_audio|>",
}
# the code model's tokenizer markers (seed 001), in its order
SEED_001 = [
    "<pad>",
    "<unk>",
    "<bos>",
    "<eos>",
    "<sep>",
    "### Language:",
    "### Code:",
    "### End",
    "<tool_call>",
    "</tool_call>",
]


def test_registry_has_no_duplicate_names_or_strings():
    names = [name for group in TOKEN_GROUPS.values() for name in group]
    strings = [tok for group in TOKEN_GROUPS.values() for tok in group.values()]
    assert len(names) == len(set(names))
    assert len(strings) == len(set(strings))
    assert all_special_tokens() == strings  # merged, in group order
    assert len(SPECIAL_TOKENS) == len(names)


def test_duplicate_definitions_are_refused():
    with pytest.raises(ValueError, match="defined twice"):
        tokens._merge({"a": {"x": "<|x|>"}, "b": {"y": "<|x|>"}})
    with pytest.raises(ValueError, match="defined twice"):
        tokens._merge({"a": {"x": "<|x|>"}, "b": {"x": "<|y|>"}})


def test_seed_tokens_are_all_present():
    for name, token in SEED_000.items():
        assert SPECIAL_TOKENS[name] == token, name
    assert all_special_tokens()[-len(SEED_001) :] == SEED_001
    assert (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN) == ("<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>")


def test_every_block_token_has_its_partner():
    for token in all_special_tokens():
        if token.startswith("<|/"):
            assert "<|" + token[3:] in SPECIAL_TOKENS.values(), token


def test_reasoning_tokens():
    reasoning = get_reasoning_tokens()
    assert reasoning["think_start"] == "<|think|>" and reasoning["think_end"] == "<|/think|>"
    assert {"<|plan|>", "<|step|>", "<|verify|>"} <= set(reasoning.values())


def test_render_chat_exact():
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": '<|tool_call|>\n{"name": "w"}\n<|/tool_call|>'},
        {"role": "tool", "content": '{"t": 20}'},
    ]
    expected = (
        "<|system|>\nYou are a helpful assistant.\n<|/system|>\n"
        "<|user|>\nHello!\n<|/user|>\n"
        "<|assistant|>\nHi! How can I help?\n<|/assistant|>\n"
        "<|user|>\nWeather?\n<|/user|>\n"
        '<|assistant|>\n<|tool_call|>\n{"name": "w"}\n<|/tool_call|>\n<|/assistant|>\n'
        '<|tool_result|>\n{"t": 20}\n<|/tool_result|>\n'
    )
    assert render_chat(messages) == expected
    assert render_chat(messages, add_generation_prompt=True) == expected + "<|assistant|>\n"
    assert render_chat(messages[:2], add_generation_prompt=True) == (
        "<|system|>\nYou are a helpful assistant.\n<|/system|>\n<|user|>\nHello!\n<|/user|>\n<|assistant|>\n"
    )
    assert render_chat([]) == ""


def test_render_chat_matches_transformers():
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "user", "content": "  spaced  \n\nlines "}, {"role": "assistant", "content": "ok"}]
    for gen in (False, True):
        rendered, _ = render_jinja_template([messages], chat_template=CHAT_TEMPLATE, add_generation_prompt=gen)
        assert rendered[0] == render_chat(messages, add_generation_prompt=gen)


def test_render_chat_rejects_unknown_role():
    with pytest.raises(jinja2.TemplateError, match="Unknown chat role: robot"):
        render_chat([{"role": "robot", "content": "beep"}])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<|think|>\n2 + 2 = 4\n<|/think|>\nThe answer is 4.", "The answer is 4."),
        ("A<|plan|>p1<|step|>p2<|/plan|>B<|memory|>m<|/memory|>C", "ABC"),
        ("x<|think|>a<|/think|>y<|think|>b<|/think|>z", "xyz"),
        ("Hello<|think|>still thinking, never closed", "Hello"),
        ("<|/think|>Result<|step|>!", "Result!"),
        ("<|working_memory|>k=v<|/working_memory|>ok<|reflect|>hmm<|/reflect|><|verify|>v<|/verify|>", "ok"),
        (
            "<|tool_call|>{}<|/tool_call|> <|idk|>no idea<|/idk|>",
            "<|tool_call|>{}<|/tool_call|> <|idk|>no idea<|/idk|>",
        ),
        ("no tokens at all", "no tokens at all"),
    ],
)
def test_strip_hidden_tokens(text, expected):
    assert strip_hidden_tokens(text) == expected


def test_hidden_tokens_are_registered():
    assert HIDDEN_TOKENS <= set(all_special_tokens())
    assert {"<|think|>", "<|/think|>", "<|plan|>", "<|memory|>", "<|step|>"} <= HIDDEN_TOKENS


def test_loss_blocks():
    assert LOSS_BLOCKS["cot"] == ("<|think|>", "<|/think|>")
    assert LOSS_BLOCKS["tool"] == ("<|tool_call|>", "<|/tool_call|>")
    assert LOSS_BLOCKS["anti_hallucination"] == ("<|uncertain|>", "<|/uncertain|>")
    assert LOSS_BLOCKS["code_exec"] == ("<|exec|>", "<|/exec|>")
    registry = set(all_special_tokens())
    for group, pairs in LOSS_BLOCK_PAIRS.items():
        assert LOSS_BLOCKS[group] == pairs[0]
        for open_, close in pairs:
            assert open_ in registry and close in registry
            assert close == "<|/" + open_[2:]
    assert ("<|idk|>", "<|/idk|>") in LOSS_BLOCK_PAIRS["anti_hallucination"]
    assert ("<|tool_result|>", "<|/tool_result|>") in LOSS_BLOCK_PAIRS["tool"]
