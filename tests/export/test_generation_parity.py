"""Exports generate like the model trained: special ids in config.json / generation_config.json,
BOS added by the exported tokenizer and chat template exactly as training rows start, and
``pipeline("text-generation")``, ``model.generate`` on the loaded export and our own generate give
the same tokens and stop at EOS (a tiny model trained to end there, so stopping is really tested)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tests.export.export_helpers import CHAT, DOC_PROMPT, DOC_REST, make_model, run_export, training_rows
from xoron_pipelines.export.hf import export_hf
from xoron_pipelines.export.tokenizer import END_OF_TURN
from xoron_pipelines.training.sft import build_sft_example

MAX_NEW = 24
CONVERSATIONS = [
    CHAT,
    [{"role": "system", "content": "be brief"}, *CHAT, {"role": "user", "content": "and 2?"}],
    [
        {"role": "user", "content": "for i in range(10):"},
        {"role": "assistant", "content": "<|think|>loop<|/think|>print(i * i)"},
        {"role": "tool", "content": "0 1 4"},
        {"role": "assistant", "content": "done"},
    ],
]


@pytest.fixture(scope="module")
def native_export(trained, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "hf"
    info = export_hf(trained["nano"], path, tokenizer, stage="tools", max_new_tokens=MAX_NEW)
    assert info["format"] == "native"
    return path


def test_special_ids_and_tokenizer_are_those_training_used(native_export, trained, tokenizer):
    eos, eot = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert trained["nano"].config.eos_token_id is None  # like a pipeline-trained model; export fills it in
    config = json.loads((native_export / "config.json").read_text())
    assert [config[f"{k}_token_id"] for k in ("bos", "eos", "pad")] == [
        tokenizer.bos_token_id,
        eos,
        tokenizer.pad_token_id,
    ]
    gen = json.loads((native_export / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [eos, eot] and gen["bos_token_id"] == tokenizer.bos_token_id
    assert gen["pad_token_id"] == tokenizer.pad_token_id and gen["max_new_tokens"] == MAX_NEW
    tok_config = json.loads((native_export / "tokenizer_config.json").read_text())
    assert tok_config["add_bos_token"] is True and tok_config["add_eos_token"] is False

    exported = AutoTokenizer.from_pretrained(native_export, local_files_only=True)
    doc = training_rows(tokenizer)[0]  # [BOS] + text + [EOS], as packed
    assert exported(DOC_PROMPT + DOC_REST)["input_ids"] == doc[:-1]
    assert tokenizer(DOC_PROMPT)["input_ids"][0] != tokenizer.bos_token_id  # training's tokenizer is unchanged
    for messages in CONVERSATIONS:  # the chat template gives an SFT row's ids, prompt included
        row = build_sft_example(messages, tokenizer, 1024)["input_ids"].tolist()
        assert exported.apply_chat_template(messages)["input_ids"] == row
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = exported.apply_chat_template(messages[:first], add_generation_prompt=True)["input_ids"]
        assert row[: len(prompt)] == prompt and prompt[0] == tokenizer.bos_token_id


def test_pipeline_transformers_and_our_generate_agree_and_stop_at_eos(native_export, trained):
    exported = AutoTokenizer.from_pretrained(native_export, local_files_only=True)
    native = AutoModelForCausalLM.from_pretrained(native_export, local_files_only=True).eval()
    ours_model = trained["nano"]
    eos, eot = exported.eos_token_id, exported.convert_tokens_to_ids(END_OF_TURN)
    generate = pipeline("text-generation", model=str(native_export))

    prompt = torch.tensor([exported(DOC_PROMPT)["input_ids"]])
    theirs = native.generate(prompt)[0].tolist()  # every default from generation_config.json
    ours = ours_model.generate(prompt, eos_token_id=[eos, eot], max_new_tokens=MAX_NEW)[0].tolist()
    piped = generate(DOC_PROMPT, return_tensors=True)[0]["generated_token_ids"]
    piped = piped.tolist() if hasattr(piped, "tolist") else list(piped)
    assert theirs == ours == piped
    assert theirs[-1] == eos and len(theirs) - prompt.shape[1] < MAX_NEW  # stopped at EOS, not the limit
    assert exported.decode(theirs[prompt.shape[1] :], skip_special_tokens=True) == DOC_REST
    assert generate(DOC_PROMPT)[0]["generated_text"] == DOC_PROMPT + DOC_REST

    chat = torch.tensor([exported.apply_chat_template(CHAT[:1], add_generation_prompt=True)["input_ids"]])
    theirs = native.generate(chat)[0].tolist()
    assert theirs == ours_model.generate(chat, eos_token_id=[eos, eot], max_new_tokens=MAX_NEW)[0].tolist()
    assert theirs[-1] == eot  # the assistant closes its turn, as SFT taught it
    reply = generate(CHAT[:1])[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and reply["content"].strip() == CHAT[1]["content"]


def test_xoron_format_export_generates_with_our_generate_and_stops(trained, tokenizer, tmp_path):
    """A model without a native class (learned positions, LayerNorm) loads as XoronForCausalLM,
    whose generate is ours: its defaults come from the exported generation_config.json."""
    import xoron_pipelines.model  # noqa: F401  (registers model_type "xoron")

    model = trained["nano-learned"]
    info = export_hf(model, tmp_path / "hf", tokenizer, max_new_tokens=MAX_NEW)
    assert info["format"] == "xoron"
    exported = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert loaded.config.eos_token_id == tokenizer.eos_token_id and loaded.config.bos_token_id == 0
    prompt = torch.tensor([exported(DOC_PROMPT)["input_ids"]])
    out = loaded.generate(prompt)[0].tolist()
    assert out[-1] == tokenizer.eos_token_id and len(out) - prompt.shape[1] < MAX_NEW
    assert exported.decode(out[prompt.shape[1] :], skip_special_tokens=True) == DOC_REST
    chat = torch.tensor([exported.apply_chat_template(CHAT[:1], add_generation_prompt=True)["input_ids"]])
    out = loaded.generate(chat)[0].tolist()
    assert out[-1] == tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert exported.decode(out[chat.shape[1] :], skip_special_tokens=True).strip() == CHAT[1]["content"]


def test_a_model_trained_with_other_special_ids_is_refused(tokenizer, tmp_path):
    model = make_model("nano", tokenizer, num_layers=1)
    model.config.eos_token_id = tokenizer.eos_token_id + 5
    with pytest.raises(ValueError, match="eos_token_id=.*but the tokenizer's is"):
        export_hf(model, tmp_path / "hf", tokenizer)
    assert not (tmp_path / "hf").exists()
    assert model.config.eos_token_id == tokenizer.eos_token_id + 5  # the model is left as it was


def test_model_card_summarises_data_stages_evaluation_and_licence(trained, tokenizer, tmp_path):
    import yaml

    data = {
        "max_seq_len": 64,
        "sources": {"prose": {"documents": 120, "tokens": 4567, "achieved_share": 0.6}},
        "splits": {"train": {"documents": 110, "tokens": 4000, "sequences": 70}},
    }
    stages = {
        "language": {"kind": "causal_lm", "steps": 200, "tokens_seen": 409600, "eval_loss": 3.25},
        "code": {"enabled": False},
    }
    table = "| metric | language |\n|---|---|\n| mmlu.acc | 0.25 |"
    export_hf(
        trained["nano"], tmp_path / "hf", tokenizer, stage="code", summary=stages["code"], data=data, stages=stages,
        evaluation=table, license="apache-2.0",
    )  # fmt: skip
    card = (tmp_path / "hf" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert meta["datasets"] == ["prose"] and "xoron-pipelines" in meta["tags"]
    assert "| prose | 120 | 4,567 | 0.6 |" in card and "| train | 110 | 4,000 | 70 |" in card
    assert "| language | causal_lm | 200 | 409,600 | - | 3.25 | - |" in card and "| code | (disabled" in card
    assert table in card and "## Limitations" in card and "`apache-2.0`" in card


def test_exported_files_follow_the_umask(tokenizer, tmp_path):
    """Every exported file and directory has the modes open()/mkdir() give under the user's umask."""
    model = make_model("nano", tokenizer, num_layers=1)
    params = {"output_dir": str(tmp_path / "out"), "formats": ["hf", "gguf"], "gguf_types": ["q8_0"]}
    old = os.umask(0o027)
    try:
        run_export(model, tokenizer, None, None, {**params, "register_mlflow": False})
    finally:
        os.umask(old)
    paths = [tmp_path / "out", *(tmp_path / "out").rglob("*")]
    assert {p.name for p in paths} >= {"hf", "gguf", "model-q8_0.gguf", "model.safetensors", "tokenizer.json"}
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in paths}
    want = {name: 0o750 if (tmp_path / name).is_dir() else 0o640 for name in modes}
    assert modes == want
