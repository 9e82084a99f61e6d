"""The one registry of special tokens, the chat template and the loss-weighted blocks.

Everything that writes or reads special tokens (synthetic data, data processing, tokenizer
training, the model's loss weighting, generation post-processing) imports them from here, so a
token string is spelled in exactly one place.

Contents:

* :data:`TOKEN_GROUPS` -- group name -> {token name: token string}. The Xoron-Dev groups
  (sequence control, conversation, memory & context, FIM, git, code execution, file operations,
  reasoning, uncertainty, tool calling, multimodal) come first; the code-model markers of the
  llm-from-scratch configuration (``<pad>``, ``### Code:``, ``<tool_call>`` ...) last. Block
  tokens come in pairs ``<|x|>`` / ``<|/x|>``.
* :data:`SPECIAL_TOKENS` -- all groups merged (names and strings are unique; checked at import).
* :data:`CHAT_TEMPLATE` / :func:`render_chat` -- the Jinja chat template and a renderer that
  behaves like ``tokenizer.apply_chat_template(..., tokenize=False)``.
* :data:`HIDDEN_TOKENS` / :func:`strip_hidden_tokens` -- internal tokens removed from
  user-visible output.
* :data:`LOSS_BLOCKS` -- the blocks whose tokens get a weighted loss in training.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

#: paired block name -> (opening, closing) token, filled by :func:`_pair`
BLOCKS: dict[str, tuple[str, str]] = {}


def _pair(name: str, tag: str, bare: bool = False) -> dict[str, str]:
    """An opening/closing pair ``<|tag|>`` / ``<|/tag|>`` named ``name_start`` / ``name_end``,
    or ``name`` / ``name_end`` when ``bare`` (where the Xoron-Dev reference names the opening
    token without ``_start``, e.g. ``"idk": "<|idk|>"``). Registers the block in BLOCKS."""
    open_, close = f"<|{tag}|>", f"<|/{tag}|>"
    BLOCKS[name] = (open_, close)
    return {name if bare else f"{name}_start": open_, f"{name}_end": close}


TOKEN_GROUPS: dict[str, dict[str, str]] = {
    "sequence_control": {
        "bos": "<|bos|>",
        "eos": "<|eos|>",
        "pad": "<|pad|>",
        "unk": "<|unk|>",
        "sep": "<|sep|>",
        "prompt_start": "<|prompt|>",
        "prompt_end": "<|/prompt|>",
        "response_start": "<|response|>",
        "response_end": "<|/response|>",
    },
    "conversation": {
        **_pair("system", "system"),
        **_pair("user", "user"),
        **_pair("assistant", "assistant"),
    },
    "memory_context": {
        **_pair("memory", "memory"),
        **_pair("working_memory", "working_memory"),
        **_pair("summary", "summary"),
        **_pair("context", "context"),
        **_pair("document", "document"),
    },
    "fim": {
        "fim_prefix": "<|fim_prefix|>",
        "fim_middle": "<|fim_middle|>",
        "fim_suffix": "<|fim_suffix|>",
        "fim_pad": "<|fim_pad|>",
    },
    "git": {
        **_pair("commit_before", "commit_before", bare=True),
        **_pair("commit_after", "commit_after", bare=True),
        **_pair("commit_msg", "commit_msg", bare=True),
        **_pair("diff", "diff"),
        "diff_add": "<|diff_add|>",
        "diff_del": "<|diff_del|>",
        "diff_context": "<|diff_context|>",
        **_pair("issue", "issue"),
    },
    "code_execution": {
        **_pair("jupyter_code", "jupyter_code", bare=True),
        **_pair("jupyter_output", "jupyter_output", bare=True),
        **_pair("exec", "exec"),
        **_pair("exec_result", "exec_result", bare=True),
        **_pair("exec_error", "exec_error", bare=True),
    },
    "file_operations": {
        **_pair("add_file", "add_file", bare=True),
        **_pair("delete_file", "delete_file", bare=True),
        **_pair("edit_file", "edit_file", bare=True),
        **_pair("read_file", "read_file", bare=True),
        **_pair("file_content", "file_content", bare=True),
    },
    "reasoning": {
        **_pair("think", "think"),
        **_pair("plan", "plan"),
        "step": "<|step|>",
        **_pair("verify", "verify", bare=True),
        **_pair("reflect", "reflect"),
        **_pair("answer", "answer"),
    },
    "uncertainty": {
        **_pair("uncertain", "uncertain", bare=True),
        "confident": "<|confident|>",
        "needs_verification": "<|needs_verify|>",
        **_pair("idk", "idk", bare=True),
        **_pair("cite", "cite", bare=True),
    },
    "tool_calling": {
        **_pair("tools", "tools"),
        **_pair("tool_call", "tool_call"),
        **_pair("tool_result", "tool_result"),
    },
    "multimodal": {
        **_pair("image", "image"),
        **_pair("video", "video"),
        **_pair("audio", "audio"),
        **_pair("gen_image", "gen_image", bare=True),
        **_pair("gen_video", "gen_video", bare=True),
        **_pair("gen_audio", "gen_audio", bare=True),
    },
    # Markers of the code model's tokenizer (llm-from-scratch configuration reference).
    "code_model_markers": {
        "plain_pad": "<pad>",
        "plain_unk": "<unk>",
        "plain_bos": "<bos>",
        "plain_eos": "<eos>",
        "plain_sep": "<sep>",
        "language_marker": "### Language:",
        "code_marker": "### Code:",
        "end_marker": "### End",
        "plain_tool_call_start": "<tool_call>",
        "plain_tool_call_end": "</tool_call>",
    },
}


def _merge(groups: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Merge the groups into one dict, refusing a duplicate name or a duplicate token string."""
    merged: dict[str, str] = {}
    owner: dict[str, str] = {}
    for group, tokens in groups.items():
        for name, token in tokens.items():
            if name in merged:
                raise ValueError(f"special token name {name!r} defined twice (group {group!r})")
            if token in owner:
                raise ValueError(f"special token {token!r} defined twice ({owner[token]!r} and {name!r})")
            merged[name] = token
            owner[token] = name
    return merged


SPECIAL_TOKENS: dict[str, str] = _merge(TOKEN_GROUPS)

BOS_TOKEN = SPECIAL_TOKENS["bos"]
EOS_TOKEN = SPECIAL_TOKENS["eos"]
PAD_TOKEN = SPECIAL_TOKENS["pad"]
UNK_TOKEN = SPECIAL_TOKENS["unk"]


def all_special_tokens() -> list[str]:
    """Every special token string once, in registry order (Xoron-Dev groups, then code markers)."""
    return list(SPECIAL_TOKENS.values())


def get_reasoning_tokens() -> dict[str, str]:
    """The reasoning tokens (think / plan / step / verify / reflect / answer)."""
    return dict(TOKEN_GROUPS["reasoning"])


def get_uncertainty_tokens() -> dict[str, str]:
    """The uncertainty / anti-hallucination tokens."""
    return dict(TOKEN_GROUPS["uncertainty"])


def block(name: str) -> tuple[str, str]:
    """The (opening, closing) token strings of the paired block ``name`` (e.g. ``"think"``)."""
    return BLOCKS[name]


# --------------------------------------------------------------------------- loss blocks

# Token groups with a weighted loss (TrainingConfig: cot 1.5, tool 1.3, anti-hallucination 1.2,
# code execution 1.2). LOSS_BLOCKS gives each group's primary (open, close) pair;
# LOSS_BLOCK_PAIRS lists every pair that belongs to the group.
LOSS_BLOCK_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "cot": (block("think"),),
    "tool": (block("tool_call"), block("tool_result")),
    "anti_hallucination": (block("uncertain"), block("idk")),
    "code_exec": (block("exec"), block("exec_result"), block("jupyter_code"), block("jupyter_output")),
}
LOSS_BLOCKS: dict[str, tuple[str, str]] = {group: pairs[0] for group, pairs in LOSS_BLOCK_PAIRS.items()}


# --------------------------------------------------------------------------- hidden tokens

#: Paired blocks that are internal to the model: removed *with their content* from output.
HIDDEN_BLOCKS: tuple[tuple[str, str], ...] = (
    block("think"),
    block("plan"),
    block("reflect"),
    block("verify"),
    block("memory"),
    block("working_memory"),
)
#: Single internal tokens: removed where they appear outside a hidden block.
HIDDEN_SINGLE_TOKENS: tuple[str, ...] = (SPECIAL_TOKENS["step"],)
#: Every hidden token string (both ends of each hidden block, plus the single ones).
HIDDEN_TOKENS: frozenset[str] = frozenset([tok for pair in HIDDEN_BLOCKS for tok in pair] + list(HIDDEN_SINGLE_TOKENS))

_HIDDEN_BLOCK_RE = re.compile(
    "|".join(
        # a closed block, or an unclosed one that runs to the end of the text (truncated generation)
        f"{re.escape(open_)}.*?(?:{re.escape(close)}|\\Z)"
        for open_, close in HIDDEN_BLOCKS
    ),
    re.DOTALL,
)
_HIDDEN_STRAY_RE = re.compile("|".join(re.escape(t) for t in sorted(HIDDEN_TOKENS, key=len, reverse=True)))


def strip_hidden_tokens(text: str) -> str:
    """Remove internal tokens from model output, leaving what the user should see.

    1. Every hidden block (think, plan, reflect, verify, memory, working_memory) is removed
       together with its content, from its opening token to the first matching closing token.
       An opening token without a closing one (generation stopped mid-thought) removes
       everything up to the end of the text. Blocks are removed left to right; a hidden block
       nested inside another is removed with its parent.
    2. Any remaining hidden token (a stray closing token, a ``<|step|>`` outside a block) is
       removed on its own.
    3. Leading/trailing whitespace of the result is stripped. Nothing else changes: other
       special tokens (tool calls, uncertainty markers ...) are kept.
    """
    text = _HIDDEN_BLOCK_RE.sub("", text)
    text = _HIDDEN_STRAY_RE.sub("", text)
    return text.strip()


# --------------------------------------------------------------------------- chat template

#: Role -> (opening, closing) tag. ``tool`` carries a tool's result back to the assistant.
CHAT_ROLES: dict[str, tuple[str, str]] = {
    "system": block("system"),
    "user": block("user"),
    "assistant": block("assistant"),
    "tool": block("tool_result"),
}


def _build_chat_template() -> str:
    """The Jinja chat template. Every literal is emitted by a ``{{ }}`` expression and every
    tag strips its surrounding whitespace, so the output does not depend on trim_blocks or
    lstrip_blocks: each message renders as ``<open>\\n{content}\\n<close>\\n``."""
    branches = []
    for i, (role, (open_, close)) in enumerate(CHAT_ROLES.items()):
        keyword = "if" if i == 0 else "elif"
        branches.append(
            f"{{%- {keyword} message['role'] == '{role}' -%}}\n"
            f"{{{{- '{open_}\\n' + message['content'] + '\\n{close}\\n' -}}}}\n"
        )
    open_assistant = CHAT_ROLES["assistant"][0]
    return (
        "{%- for message in messages -%}\n" + "".join(branches) + "{%- else -%}\n"
        "{{- raise_exception('Unknown chat role: ' + message['role']) -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        f"{{{{- '{open_assistant}\\n' -}}}}\n"
        "{%- endif -%}"
    )


CHAT_TEMPLATE: str = _build_chat_template()


@lru_cache(maxsize=8)
def _compile(template: str):
    """Compile like transformers' ``apply_chat_template``: sandboxed, trim/lstrip blocks."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(
    messages: Iterable[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    template: str = CHAT_TEMPLATE,
) -> str:
    """Render ``messages`` ([{"role", "content"}, ...]) to text with the chat template.

    Gives the same string as ``tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=...)`` for a tokenizer carrying :data:`CHAT_TEMPLATE`, without
    needing a tokenizer. An unknown role raises ``jinja2.TemplateError``.
    """
    return _compile(template).render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt)


__all__ = [
    "BLOCKS",
    "BOS_TOKEN",
    "CHAT_ROLES",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "HIDDEN_BLOCKS",
    "HIDDEN_SINGLE_TOKENS",
    "HIDDEN_TOKENS",
    "LOSS_BLOCKS",
    "LOSS_BLOCK_PAIRS",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "TOKEN_GROUPS",
    "UNK_TOKEN",
    "all_special_tokens",
    "block",
    "get_reasoning_tokens",
    "get_uncertainty_tokens",
    "render_chat",
    "strip_hidden_tokens",
]
