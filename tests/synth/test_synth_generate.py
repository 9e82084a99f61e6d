"""The synth generators: determinism, counts, schema, and that stated results are true."""

from __future__ import annotations

import difflib
import json
import operator
import os
import re
import subprocess
import sys

import pytest

from xoron_pipelines.categories import DATASET_CATEGORIES
from xoron_pipelines.pipelines.synth.nodes import generate_synthetic
from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES
from xoron_pipelines.synth.generators.gitops import detokenize_diff
from xoron_pipelines.synth.generators.tools import RATES
from xoron_pipelines.tokens import SPECIAL_TOKENS, render_chat, strip_hidden_tokens

N = 60


def _params(seed=42, n=N, **overrides):
    counts = {t: n for t in SYNTH_TYPES}
    counts.update(overrides)
    return {"seed": seed, "counts": counts}


@pytest.fixture(scope="module")
def corpus():
    return generate_synthetic(_params())


def _between(text: str, open_: str, close: str) -> list[str]:
    return re.findall(re.escape(open_) + r"\n?(.*?)\n?" + re.escape(close), text, flags=re.DOTALL)


def _assistant(row) -> str:
    return "\n".join(m["content"] for m in row["messages"] if m["role"] == "assistant")


def test_deterministic_per_seed(corpus):
    again, manifest = generate_synthetic(_params())
    assert json.dumps(again, sort_keys=True) == json.dumps(corpus[0], sort_keys=True)
    assert manifest == corpus[1]
    other, _ = generate_synthetic(_params(seed=43))
    for kind in SYNTH_TYPES:
        assert other[kind] != corpus[0][kind], kind


def test_counts_zero_disables_and_types_are_independent(corpus):
    parts, manifest = generate_synthetic(_params(n=5, fim=0, chat=7))
    assert "fim" not in parts and len(parts["chat"]) == 7
    assert all(len(parts[t]) == 5 for t in SYNTH_TYPES if t not in ("fim", "chat"))
    assert manifest["by_type"] == {t: len(rows) for t, rows in parts.items()}
    # each type has its own random stream: other counts do not change its rows
    assert parts["chain_of_thought"] == corpus[0]["chain_of_thought"][:5]


def test_schema_of_every_row(corpus):
    parts, manifest = corpus
    assert list(parts) == list(SYNTH_TYPES)
    ids = set()
    for kind, rows in parts.items():
        assert len(rows) == N
        for row in rows:
            assert row["type"] == kind
            assert row["category"] in DATASET_CATEGORIES
            assert row["difficulty"] in ("easy", "medium", "hard")
            assert isinstance(row["metadata"], dict)
            ids.add(row["metadata"]["id"])
            if kind == "dialogue_summary":
                assert row["source"] and row["target"]
            elif kind == "preference":
                assert row["prompt"] and row["chosen"] and row["rejected"] and row["chosen"] != row["rejected"]
            elif kind == "fim":
                assert isinstance(row["text"], str)
            else:
                roles = [m["role"] for m in row["messages"]]
                assert set(roles) <= {"system", "user", "assistant", "tool"} and roles[-1] == "assistant"
                assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])
                render_chat(row["messages"])
    assert len(ids) == N * len(SYNTH_TYPES)
    total = N * len(SYNTH_TYPES)
    assert manifest["total"] == total
    for key in ("by_type", "by_category", "by_difficulty"):
        assert sum(manifest[key].values()) == total


def test_difficulty_mix_follows_weights():
    parts, manifest = generate_synthetic({**_params(n=100), "difficulty": {"easy": 1, "medium": 0, "hard": 0}})
    assert manifest["by_difficulty"] == {"easy": 1400}
    _, manifest = generate_synthetic({**_params(n=100), "difficulty": {"easy": 0.3, "medium": 0.5, "hard": 0.2}})
    shares = {k: v / 1400 for k, v in manifest["by_difficulty"].items()}
    assert shares == pytest.approx({"easy": 0.3, "medium": 0.5, "hard": 0.2}, abs=0.05)


OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv, "%": operator.mod}
SYMBOL = {"+": "+", "-": "-", "*": "×", "//": "÷", "%": "mod"}


def test_chain_of_thought_arithmetic_is_correct(corpus):
    for row in corpus[0]["chain_of_thought"]:
        meta, answer = row["metadata"], _assistant(row)
        (think,) = _between(answer, "<|think|>", "<|/think|>")
        for a, op, b, result in meta["operations"]:
            assert OPS[op](a, b) == result
            assert f"{a} {SYMBOL[op]} {b} = {result}" in think
        assert meta["answer"] == meta["operations"][-1][3]
        visible = strip_hidden_tokens(answer)
        assert str(meta["answer"]) in visible and "<|step|>" not in visible


def test_python_outputs_are_what_python_prints(corpus, tmp_path):
    rows = corpus[0]["code_exec_python"]
    sample = [r for r in rows if r["metadata"]["error"]][:3] + [r for r in rows if not r["metadata"]["error"]][:5]
    assert len(sample) == 8
    for i, row in enumerate(sample):
        meta = row["metadata"]
        script = tmp_path / f"prog{i}.py"
        script.write_text(meta["code"])
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
        assert proc.stdout == meta["stdout"]
        if meta["error"]:
            assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == meta["error"]
            assert f"<|exec_error|>\n{meta['error']}\n<|/exec_error|>" in _assistant(row)
        else:
            assert proc.returncode == 0
        if meta["stdout"]:
            assert f"<|exec_result|>\n{meta['stdout'].rstrip()}\n<|/exec_result|>" in _assistant(row)


def test_shell_outputs_are_what_bash_prints(corpus, tmp_path):
    programs = set()
    for i, row in enumerate(corpus[0]["code_exec_shell"][:20]):
        workdir = tmp_path / f"s{i}"
        workdir.mkdir()
        meta = row["metadata"]
        for command, expected in zip(meta["commands"], meta["outputs"]):
            proc = subprocess.run(
                ["bash", "-c", command],
                cwd=workdir,
                capture_output=True,
                text=True,
                env={**os.environ, "LC_ALL": "C"},
                timeout=30,
            )
            assert proc.stdout.rstrip("\n") == expected, command
            programs.add(command.split()[0])
    assert {"printf", "grep", "sort", "echo", "python3", "ls"} <= programs


def test_jupyter_outputs_match_a_script_run(corpus, tmp_path):
    """Rewrite each cell's final expression as a print of its repr and run the notebook as a script."""
    for i, row in enumerate(corpus[0]["code_exec_jupyter"][:4]):
        meta = row["metadata"]
        script, marker = [], "@@CELL@@"
        for cell in meta["cells"]:
            *body, last = cell.splitlines()
            script += body + [f"__v = {last}", "if __v is not None: print(repr(__v), end='')", f"print({marker!r})"]
        path = tmp_path / f"nb{i}.py"
        path.write_text("\n".join(script) + "\n")
        out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, check=True).stdout
        assert out.split(marker + "\n")[:-1] == meta["outputs"]


def test_fim_rows_reassemble(corpus):
    p, s, m = SPECIAL_TOKENS["fim_prefix"], SPECIAL_TOKENS["fim_suffix"], SPECIAL_TOKENS["fim_middle"]
    modes = set()
    for row in corpus[0]["fim"]:
        text, meta = row["text"], row["metadata"]
        if meta["mode"] == "psm":
            prefix, rest = text.removeprefix(p).split(s)
            suffix, middle = rest.split(m)
        else:
            suffix, rest = text.removeprefix(s).split(p)
            prefix, middle = rest.split(m)
        assert prefix + middle + suffix == meta["original"] and middle
        modes.add(meta["mode"])
        if row["difficulty"] == "easy":
            assert middle.endswith("\n") and middle.count("\n") == 1
    assert modes == {"psm", "spm"}


def test_git_diffs_are_real(corpus):
    for row in corpus[0]["git_diff"]:
        meta = row["metadata"]
        expected = "".join(
            difflib.unified_diff(
                meta["before"].splitlines(True),
                meta["after"].splitlines(True),
                f"a/{meta['path']}",
                f"b/{meta['path']}",
            )
        )
        assert meta["diff"] == expected and meta["before"] != meta["after"]
        convo = render_chat(row["messages"])
        (diff_block,) = _between(convo, "<|diff|>", "<|/diff|>")
        assert detokenize_diff(diff_block) == expected.rstrip("\n")
        if meta["direction"] == "apply_diff":
            assert _between(_assistant(row), "<|commit_after|>", "<|/commit_after|>") == [meta["after"].rstrip()]
    for row in corpus[0]["git_commit"]:
        (message,) = _between(_assistant(row), "<|commit_msg|>", "<|/commit_msg|>")
        assert re.match(r"^(refactor|fix|docs|chore)\(\w+\): ", message)
        if row["metadata"]["issue"]:
            assert message.endswith(f"Fixes #{row['metadata']['issue']}")


def test_tool_calls_are_well_formed_and_grounded(corpus):
    for kind in ("tool_call", "tool_call_multi_turn"):
        for row in corpus[0][kind]:
            meta = row["metadata"]
            calls = [json.loads(c) for c in _between(_assistant(row), "<|tool_call|>", "<|/tool_call|>")]
            assert calls == meta["calls"]
            results = [json.loads(m["content"]) for m in row["messages"] if m["role"] == "tool"]
            assert results == meta["results"]
            for call, result in zip(calls, results):
                assert call["name"] in meta["tools"]
                args = call["arguments"]
                if call["name"] == "calculator":
                    assert result["result"] == eval(args["expression"], {"__builtins__": {}})  # digits/ops only
                if call["name"] == "convert_currency":
                    expected = round(args["amount"] / RATES[args["from_currency"]] * RATES[args["to_currency"]], 2)
                    assert result["amount"] == expected


def test_anti_hallucination_and_preferences(corpus):
    kinds = set()
    for row in corpus[0]["anti_hallucination"]:
        answer, meta = _assistant(row), row["metadata"]
        kinds.add(meta["kind"])
        if meta["kind"] == "idk":
            assert not meta["answerable"] and answer.startswith("<|idk|>\nI don't know")
        elif meta["kind"] == "uncertain":
            assert answer.startswith("<|uncertain|>")
        else:
            assert answer.startswith("<|confident|>")
    assert kinds == {"idk", "uncertain", "confident"}
    for row in corpus[0]["preference"]:
        if row["metadata"]["kind"] == "arithmetic":
            meta = row["metadata"]
            assert meta["rejected_answer"] != meta["answer"]
            assert str(meta["answer"]) in strip_hidden_tokens(row["chosen"])
            assert str(meta["rejected_answer"]) in strip_hidden_tokens(row["rejected"])


def test_dialogue_summaries_state_final_facts(corpus):
    for row in corpus[0]["dialogue_summary"]:
        meta, target = row["metadata"], row["target"]
        assert all(name in target for name in meta["participants"])
        facts = meta["facts"]
        if meta["scenario"] == "meeting":
            assert f"{facts['hour']}:00" in target and f"{facts['hour']}:00" in row["source"].splitlines()[-1]
        if meta["scenario"] == "purchase":
            assert facts["total"] == facts["quantity"] * facts["price"] and f"${facts['total']}" in target


def test_file_operations_track_the_files(corpus):
    for row in corpus[0]["file_ops"]:
        meta, text = row["metadata"], render_chat(row["messages"])
        for op in meta["operations"]:
            token = {
                "read": "<|read_file|>",
                "edit": "<|edit_file|>",
                "add": "<|add_file|>",
                "delete": "<|delete_file|>",
            }[op["op"]]
            assert f"{token}{op['path']}" in text or f"{token}\n{op['path']}" in text
        if meta["operations"][-1]["op"] != "read":
            listing = ", ".join(f"`{p}`" for p in sorted(meta["files_after"])) or "none"
            assert row["messages"][-1]["content"].endswith(f"Files now: {listing}.")
        deleted = {op["path"] for op in meta["operations"] if op["op"] == "delete"}
        assert not deleted & set(meta["files_after"])
