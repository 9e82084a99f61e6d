"""Task files: loaders reject malformed rows (file and line named), prompts."""

from __future__ import annotations

import json
import re

import pytest

from xoron_pipelines.evaluation import task_files as tf

GOOD = {
    "hellaswag": {"ctx": "A man", "endings": ["a", "b"], "label": "1"},
    "mmlu": {"question": "q", "choices": ["1", "2", "3", "4"], "answer": "C"},
    "truthfulqa": {
        "question": "q",
        "mc1_targets": {"choices": ["t", "f"], "labels": [1, 0]},
        "mc2_targets": {"choices": ["t", "f"], "labels": [1, 0]},
    },
    "gsm8k": {"question": "q", "answer": "2 + 2 = 4\n#### 4"},
    "humaneval": {
        "task_id": "t/0",
        "prompt": "def f():\n",
        "test": "def check(candidate):\n    pass\n",
        "entry_point": "f",
    },
}
BAD = {
    "hellaswag": ({"ctx": "A man", "endings": ["a", "b"], "label": 2}, "label 2"),
    "mmlu": ({"question": "q", "choices": ["1", "2"], "answer": "E"}, "answer"),
    "truthfulqa": (
        {
            "question": "q",
            "mc1_targets": {"choices": ["t", "f"], "labels": [1, 1]},
            "mc2_targets": {"choices": ["t", "f"], "labels": [1, 0]},
        },
        "mc1_targets",
    ),
    "gsm8k": ({"question": "q", "answer": "four"}, "####"),
    "humaneval": ({"task_id": "t/0", "prompt": "p", "test": "assert True", "entry_point": "f"}, "check"),
}


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", list(GOOD))
def test_malformed_row_is_reported_with_file_and_line(tmp_path, fmt):
    bad, phrase = BAD[fmt]
    path = write(tmp_path / f"{fmt}.jsonl", [json.dumps(GOOD[fmt]), "", json.dumps(bad)])
    with pytest.raises(tf.TaskFileError, match=rf"{re.escape(str(path))}:3: .*{phrase}"):
        tf.load_task(path, fmt)
    assert len(tf.load_task(path, fmt, limit=1)) == 1  # rows past the limit are not read


def test_invalid_json_and_missing_file(tmp_path):
    path = write(tmp_path / "x.jsonl", [json.dumps(GOOD["gsm8k"]), "{not json"])
    with pytest.raises(tf.TaskFileError, match=rf"{re.escape(str(path))}:2: invalid JSON"):
        tf.load_task(path, "gsm8k")
    with pytest.raises(tf.TaskFileError, match="task file not found"):
        tf.load_task(tmp_path / "missing.jsonl", "gsm8k")
    with pytest.raises(tf.TaskFileError, match="x.jsonl:1: .*question"):
        tf.load_task(write(tmp_path / "x.jsonl", [json.dumps({"answer": "#### 1"})]), "gsm8k")


def test_write_then_load_round_trip(tmp_path):
    rows = [GOOD["mmlu"], {**GOOD["mmlu"], "answer": 0, "subject": "high_school_physics"}]
    tf.write_task(tmp_path / "mmlu.jsonl", rows)
    loaded = tf.load_task(tmp_path / "mmlu.jsonl", "mmlu")
    assert [r["answer"] for r in loaded] == [2, 0]
    assert list(tmp_path.iterdir()) == [tmp_path / "mmlu.jsonl"]  # no temporary file left


def test_prompts_follow_the_harness_templates():
    row = tf.validate_rows([{**GOOD["mmlu"], "subject": "college_math"}], "mmlu", "x")[0]
    item = tf.mmlu_items([row])[0]
    assert item.context == (
        "The following are multiple choice questions (with answers) about college math.\n\n"
        "q\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
    )
    assert item.choices == ("A", "B", "C", "D") and item.gold == 2
    hs = tf.validate_rows(
        [
            {
                "activity_label": "Baking",
                "ctx_a": "She mixes flour [title]",
                "ctx_b": "then",
                "endings": ["bakes it.", "sings."],
                "label": 0,
            }
        ],
        "hellaswag",
        "x",
    )
    assert tf.hellaswag_items(hs)[0].context == "Baking: She mixes flour. Then"
    mc1, mc2 = tf.truthfulqa_items(tf.validate_rows([GOOD["truthfulqa"]], "truthfulqa", "x"))
    assert mc1[0].context.endswith("\n\nQ: q\nA:") and mc2[0].labels == (1, 0)
