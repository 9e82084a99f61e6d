"""Git diffs, commit messages and agentic file operations on generated source files.

Diffs are real unified diffs (``difflib``) of a real edit; inside a ``<|diff|>`` block each
hunk line's leading ``+`` / ``-`` / space is replaced by ``<|diff_add|>`` / ``<|diff_del|>`` /
``<|diff_context|>`` (:func:`tokenize_diff`; :func:`detokenize_diff` reverses it).
"""

from __future__ import annotations

import difflib
import random
import re
from typing import Any

from xoron_pipelines.tokens import SPECIAL_TOKENS

from .common import WORDS, chat, msg, pick, wrap
from .programs import EXTENSIONS, source_file

DIFF_MARKS = {"+": SPECIAL_TOKENS["diff_add"], "-": SPECIAL_TOKENS["diff_del"], " ": SPECIAL_TOKENS["diff_context"]}
COMMENT = {"python": "#", "javascript": "//", "go": "//", "rust": "//"}
_IDENT = re.compile(r"\b(?:def|function|func|fn)\s+([A-Za-z_]\w*)|^([A-Za-z_]\w*) = ", re.MULTILINE)
_NUMBER = re.compile(r"(?<![\w.])\d+(?![\w.])")


def unified_diff(before: str, after: str, path: str) -> str:
    """Plain unified diff of two texts (``a/path`` -> ``b/path``)."""
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{path}", f"b/{path}"
        )
    )


def tokenize_diff(diff: str) -> str:
    """Replace the +/-/space mark of every hunk line by the diff tokens (headers unchanged)."""
    out = []
    for i, line in enumerate(diff.splitlines(keepends=True)):
        if i < 2 or line.startswith("@@") or line[:1] not in DIFF_MARKS:
            out.append(line)
        else:
            out.append(DIFF_MARKS[line[0]] + line[1:])
    return "".join(out)


def detokenize_diff(text: str) -> str:
    """Inverse of :func:`tokenize_diff`."""
    for mark, token in DIFF_MARKS.items():
        text = re.sub(f"^{re.escape(token)}", mark, text, flags=re.MULTILINE)
    return text


class Edit:
    """A change to a file: the new text, what kind it is, and how a human would describe it."""

    def __init__(self, after: str, kind: str, instruction: str, subject: str):
        self.after, self.kind, self.instruction, self.subject = after, kind, instruction, subject


def make_edit(rng: random.Random, language: str, code: str) -> Edit:
    """One realistic edit of ``code``: rename, change a constant, add a comment, or delete a line."""
    lines = code.splitlines(keepends=True)
    idents = sorted({a or b for a, b in _IDENT.findall(code)})
    numbers = _NUMBER.findall(code)
    kinds = ["comment", "delete"] + (["rename"] if idents else []) + (["constant"] if numbers else [])
    kind = pick(rng, tuple(kinds))
    if kind == "rename":
        old = pick(rng, tuple(idents))
        new = f"{old}_{pick(rng, ('v2', 'total', 'value', 'new', 'result'))}"
        after = re.sub(rf"\b{re.escape(old)}\b", new, code)
        return Edit(after, kind, f"rename `{old}` to `{new}`", f"rename {old} to {new}")
    if kind == "constant":
        i = pick(rng, tuple(j for j, ln in enumerate(lines) if _NUMBER.search(ln)))
        old = pick(rng, tuple(_NUMBER.findall(lines[i])))
        new = str(int(old) + rng.randint(1, 9))
        lines[i] = _NUMBER.sub(lambda m: new if m.group() == old else m.group(), lines[i], count=0)
        return Edit("".join(lines), kind, f"change {old} to {new} on line {i + 1}", f"use {new} instead of {old}")
    if kind == "comment":
        i = rng.randrange(len(lines))
        indent = re.match(r"[ \t]*", lines[i]).group()
        note = pick(rng, ("explain the loop", "document the input", "note the edge case", "clarify the result"))
        lines.insert(i, f"{indent}{COMMENT[language]} {note.capitalize()}.\n")
        return Edit("".join(lines), kind, f"add a comment to {note} above line {i + 1}", f"add comment to {note}")
    # delete an output line (print / console.log / Println ...), as when removing debug output
    candidates = [j for j, ln in enumerate(lines) if "print" in ln.lower() or "console.log" in ln]
    i = pick(rng, tuple(candidates or [j for j, ln in enumerate(lines) if ln.strip()]))
    removed = lines.pop(i).strip()
    return Edit("".join(lines), "delete", f"delete the line `{removed}`", f"remove `{removed}`")


def _file(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    language, code = source_file(rng, difficulty)
    path = f"{pick(rng, ('src', 'lib', 'app', 'pkg'))}/{pick(rng, WORDS)}.{EXTENSIONS[language]}"
    return language, path, code


def git_diff(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """Write the diff between two versions of a file, or apply a diff to a file."""
    language, path, before = _file(rng, difficulty)
    edit = make_edit(rng, language, before)
    diff = unified_diff(before, edit.after, path)
    direction = pick(rng, ("write_diff", "apply_diff"))
    if direction == "write_diff":
        user = (
            f"Here is `{path}` before and after my change. Show the diff.\n"
            f"{wrap('commit_before', before.rstrip())}\n{wrap('commit_after', edit.after.rstrip())}"
        )
        answer = wrap("diff", tokenize_diff(diff).rstrip())
    else:
        user = (
            f"Apply this patch to `{path}` and give me the new file.\n{wrap('commit_before', before.rstrip())}\n"
            f"{wrap('diff', tokenize_diff(diff).rstrip())}"
        )
        answer = wrap("commit_after", edit.after.rstrip())
    return {
        "messages": chat(rng, ("user", user), ("assistant", answer)),
        "metadata": {
            "direction": direction,
            "path": path,
            "language": language,
            "edit": edit.kind,
            "before": before,
            "after": edit.after,
            "diff": diff,
        },
    }


CC_TYPES = {"rename": "refactor", "constant": "fix", "comment": "docs", "delete": "chore"}


def git_commit(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """A commit message (conventional commits) for one or more edits, optionally fixing an issue."""
    language, path, before = _file(rng, difficulty)
    edits, current = [], before
    for _ in range({"easy": 1, "medium": 1, "hard": 2}[difficulty]):
        edit = make_edit(rng, language, current)
        edits.append(edit)
        current = edit.after
    diff = unified_diff(before, current, path)
    scope = path.rsplit("/", 1)[-1].split(".")[0]
    header = f"{CC_TYPES[edits[0].kind]}({scope}): {edits[0].subject}"
    body = "\n".join(f"- {e.instruction[0].upper()}{e.instruction[1:]} in {path}." for e in edits)
    user = f"Write a commit message for this change.\n{wrap('diff', tokenize_diff(diff).rstrip())}"
    issue = None
    if difficulty != "easy":
        issue = rng.randint(10, 999)
        user += f"\nIt addresses {wrap('issue', f'#{issue}: {edits[0].subject} in {path}', newline=False)}"
        body += f"\n\nFixes #{issue}"
    message = f"{header}\n\n{body}"
    return {
        "messages": chat(rng, ("user", user), ("assistant", wrap("commit_msg", message))),
        "metadata": {
            "path": path,
            "edits": [e.kind for e in edits],
            "issue": issue,
            "diff": diff,
            "commit_message": message,
        },
    }


# --------------------------------------------------------------------------- file operations


def _describe(path: str, content: str) -> str:
    names = sorted({a or b for a, b in _IDENT.findall(content)})
    listed = ", ".join(f"`{n}`" for n in names) if names else "no named definitions"
    return f"`{path}` has {len(content.splitlines())} lines and defines {listed}."


def file_ops(rng: random.Random, difficulty: str) -> dict[str, Any]:
    """An agent working on files: read, edit (as a diff), add and delete, turn by turn."""
    language, path, code = _file(rng, difficulty)
    files: dict[str, str] = {path: code}
    plan = {
        "easy": [pick(rng, ("read", "add", "delete"))],
        "medium": ["read", "edit"],
        "hard": ["read", "edit", "add", "delete"],
    }[difficulty]
    messages = chat(rng)
    ops = []
    for op in plan:
        target = path
        if op == "read":
            messages += [
                msg("user", f"What's in `{path}`?"),
                msg("assistant", wrap("read_file", path, newline=False)),
                msg("tool", wrap("file_content", files[path])),
                msg("assistant", _describe(path, files[path])),
            ]
        elif op == "edit":
            edit = make_edit(rng, language, files[path])
            diff = tokenize_diff(unified_diff(files[path], edit.after, path)).rstrip()
            files[path] = edit.after
            messages += [
                msg("user", f"In `{path}`, {edit.instruction}."),
                msg("assistant", wrap("edit_file", f"{path}\n{wrap('diff', diff)}")),
            ]
        elif op == "add":
            new_lang, _, new_code = _file(rng, difficulty)
            target = f"{path.rsplit('/', 1)[0]}/{pick(rng, WORDS)}_{len(files)}.{EXTENSIONS[new_lang]}"
            files[target] = new_code
            messages += [
                msg("user", f"Create `{target}` with this content:\n```\n{new_code}```"),
                msg("assistant", wrap("add_file", f"{target}\n{wrap('file_content', new_code.rstrip())}")),
            ]
        else:
            del files[path]
            messages += [
                msg("user", f"`{path}` is no longer needed; delete it."),
                msg("assistant", wrap("delete_file", path, newline=False)),
            ]
        ops.append({"op": op, "path": target})
    if plan[-1] != "read":
        listing = ", ".join(f"`{p}`" for p in sorted(files)) or "none"
        messages[-1]["content"] += f"\nDone. Files now: {listing}."
    return {"messages": messages, "metadata": {"operations": ops, "files_after": files}}
