"""The end-of-run summary lists what the run produced: stages, evaluation, export."""

from __future__ import annotations

import pandas as pd
from rich.console import Console

from xoron_pipelines.hooks import run_summary


def _render(tables) -> str:
    console = Console(width=200, record=True)
    for table in tables:
        console.print(table)
    return console.export_text()


def test_summary_tables_follow_the_run_outputs():
    data = {
        "code.train_summary": {
            "stage": "code",
            "data_mix": "code_mix",
            "processes": 2,
            "steps": 20,
            "tokens_seen": 40960,
            "train_loss": 4.9,
            "eval_loss": 4.139,
            "eval_perplexity": 62.7,
            "unigram_entropy": 6.631,
            "tokens_per_s": 7000.0,
            "wall_s": 6.0,
        },
        "language.train_summary": {
            "stage": "language",
            "steps": 200,
            "tokens_seen": 409600,
            "train_loss": 5.14,
            "eval_loss": 4.142,
            "eval_perplexity": None,
        },
        "evaluation_comparison": pd.DataFrame(
            {"metric": ["mmlu.acc"], "language": [0.175], "code": [0.2], "delta_code": [0.025], "better": ["higher"]}
        ),
        "export_manifest": {
            "source": "preference",
            "formats": {
                "hf": {"path": "data/07_model_output/export/hf", "architecture": "LlamaForCausalLM"},
                "gguf": [{"path": "g/model-f16.gguf"}, {"path": "g/model-q8_0.gguf"}],
                "onnx": {"opset": 18, "fp32": {"file": "o/model.onnx"}, "int8": {"file": "o/model.int8.onnx"}},
                "lora": {"path": None, "reason": "stage preference trained without LoRA"},
            },
        },
    }
    text = _render(run_summary(set(data), data.__getitem__))
    # stages in training order, missing values as "-"
    assert text.index("language") < text.index("code")
    assert "409,600" in text and "4.142" in text and "62.7" in text
    lang_row = next(line for line in text.splitlines() if "language" in line and "409,600" in line)
    assert "-" in lang_row
    code_row = next(line for line in text.splitlines() if "code_mix" in line)
    assert code_row.split()[:2] == ["│", "code"] and " 2 " in code_row  # its stage mix and process count
    assert "mmlu.acc" in text and "0.175" in text and "delta_code" not in text
    assert "g/model-f16.gguf, g/model-q8_0.gguf" in text and "o/model.int8.onnx" in text
    assert "nothing: stage preference trained without LoRA" in text

    # a run that produced none of these prints nothing
    assert run_summary({"packed_train"}, data.__getitem__) == []
