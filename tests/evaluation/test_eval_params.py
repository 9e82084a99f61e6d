"""Evaluation parameters: conf validates, impossible values fail, knobs take effect."""

from __future__ import annotations

import json

import pytest
import yaml

from xoron_pipelines.evaluation import task_files as tf
from xoron_pipelines.pipelines.evaluation import nodes
from xoron_pipelines.pipelines.evaluation.params import EVAL_NAMES, Params
from xoron_pipelines.tokens import CHAT_ROLES, render_chat
from xoron_pipelines.validation import ParameterError, validate_group


def test_conf_file_validates(project_root):
    values = yaml.safe_load((project_root / "conf/base/parameters_evaluation.yml").read_text())["evaluation"]
    p = validate_group("evaluation", values)
    assert p.evals == list(EVAL_NAMES) and p.eval_batch_size == 16
    assert {p.task_format(n) for n in p.evals} == {"hellaswag", "mmlu", "gsm8k", "truthfulqa", "humaneval"}


@pytest.mark.parametrize(
    "values, phrase",
    [
        ({"humaneval": {"n_samples": 2, "ks": [3], "temperature": 0.8}}, "ks"),
        ({"humaneval": {"n_samples": 4, "ks": [1], "temperature": 0.0}}, "temperature"),
        ({"evals": ["program_output", "program_output"]}, "twice"),
        ({"evals": ["arc"]}, "evals"),
        ({"evals": ["hellaswag"]}, "evals"),  # public benchmarks run through the harness, not here
        ({"tasks": {"program_output": {"format": "arc"}}}, "format"),
        ({"compare_stages": ["language", "rlhf"]}, "compare_stages"),
        ({"offline_tasks": {"arithmetic_word_problems": 0}}, "no task file"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"multiple_choice": {"acc_norm_unit": "tokens"}}, "acc_norm_unit"),
    ],
)
def test_impossible_values_fail_naming_the_key(values, phrase):
    with pytest.raises(ParameterError, match=phrase):
        validate_group("evaluation", values)


def test_task_source_order_path_then_registry_then_generated(tmp_path):
    row = {"question": "q", "answer": "#### 7"}
    generated = {"arithmetic_word_problems": lambda: [row, row, row]}
    registry = tmp_path / "registry"
    tf.write_task(registry / "arithmetic_word_problems.jsonl", [{**row, "question": "from registry"}] * 5)
    tf.write_task(tmp_path / "own.jsonl", [{**row, "question": "own file"}])
    assert len(nodes.task_rows("arithmetic_word_problems", Params.model_validate({"max_samples": 2}), generated)) == 2
    reg = Params.model_validate({"evals_registry_path": str(registry), "max_samples": None})
    assert [r["question"] for r in nodes.task_rows("arithmetic_word_problems", reg, generated)] == ["from registry"] * 5
    own = Params.model_validate(
        {
            "evals_registry_path": str(registry),
            "tasks": {"arithmetic_word_problems": {"path": str(tmp_path / "own.jsonl")}},
        }
    )
    assert [r["question"] for r in nodes.task_rows("arithmetic_word_problems", own, generated)] == ["own file"]
    limited = Params.model_validate(
        {"evals_registry_path": str(registry), "tasks": {"arithmetic_word_problems": {"max_samples": 4}}}
    )
    assert len(nodes.task_rows("arithmetic_word_problems", limited, generated)) == 4


def test_chat_prompts_switch_the_gsm8k_prompt(monkeypatch):
    seen = {}
    close = CHAT_ROLES["assistant"][1]

    def fake_generate(model, tokenizer, prompts, **kwargs):
        seen["prompts"] = prompts
        return [f"The total is 12.{close}\n{CHAT_ROLES['user'][0]} 99"] * len(prompts)

    monkeypatch.setattr(nodes, "generate_texts", fake_generate)
    rows = [{"question": "What is 5 + 7?", "answer": "5 + 7 = 12\n#### 12"}]
    p = Params()
    summary, records = nodes._gsm8k(None, None, rows, p, chat=True)
    assert seen["prompts"] == [render_chat([{"role": "user", "content": "What is 5 + 7?"}], add_generation_prompt=True)]
    assert summary["exact_match"] == 1.0 and records[0]["completion"] == "The total is 12."
    summary, records = nodes._gsm8k(None, None, rows, p, chat=False)
    assert seen["prompts"] == ["Question: What is 5 + 7?\nAnswer:"]
    assert summary["exact_match"] == 0.0 and records[0]["prediction"] == "99"  # no chat stop applies
    json.dumps(records)  # samples are JSON-serialisable


def test_repeated_choices_are_scored_once(monkeypatch, tiny_model, tiny_tokenizer):
    """mc1 and mc2 of a truthfulqa-format task share their requests: each pair is scored once."""
    calls = []
    real = nodes.loglikelihoods

    def spy(model, requests, *args, **kwargs):
        calls.append(len(requests))
        return real(model, requests, *args, **kwargs)

    monkeypatch.setattr(nodes, "loglikelihoods", spy)
    fn = nodes._loglikelihood_fn(tiny_model, tiny_tokenizer, Params(progress=False))
    pairs = [("Q: x\nA:", " no"), ("Q: x\nA:", " yes"), ("Q: x\nA:", " no")]
    first = fn(pairs)
    assert fn(pairs[:2]) == first[:2] and first[0] == first[2]
    assert calls == [2, 0]
