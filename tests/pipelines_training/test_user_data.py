"""SFT / DPO stages on the user's own datasets (JSONL, Parquet, folders, save_to_disk, hub ids),
bad rows quarantined and counted, mixes with synth partitions, weights and caps, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.pipelines_training.stage_helpers import chat_rows, preference_rows, stage
from tests.training.finetune_helpers import chat_tokenizer, nano_model
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.tokens import block
from xoron_pipelines.training import user_data
from xoron_pipelines.training.dpo import build_preference_example
from xoron_pipelines.training.schema import StageParams
from xoron_pipelines.training.sft import build_sft_example
from xoron_pipelines.training.stage_data import split_examples

ROOT = Path(__file__).resolve().parents[2]
#: one bad row per reason, and what it is quarantined as
BAD_CHAT = {
    "missing_field": {"text": "no messages here"},
    "unknown_role": {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    "empty_assistant_turn": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
    "no_assistant_turn": {"messages": [{"role": "user", "content": "hi"}]},
    "bad_messages": {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
    "not_an_object": [1, 2],
}


def _jsonl(path: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines))
    return path


def _sft(tmp_path, sources, synth=None, name="ck", **overrides):
    tok = chat_tokenizer()
    params = stage(tmp_path / name, sources=sources, max_seq_len=64, train={"max_steps": 2}, **overrides)
    return nodes.train_sft(nano_model(vocab_size=len(tok)), tok, synth or {}, params, stage="t")


def _reconciles(report: dict) -> None:
    for s in report["sources"]:
        assert s["rows_in"] == s["used"] + s["capped"] + sum(s["quarantined"].values()), s
    assert report["rows_in"] == report["used"] + report["capped"] + report["quarantined"]
    assert report["quarantined"] == sum(report["quarantine_reasons"].values())


def test_sft_on_a_jsonl_file_quarantines_bad_rows_by_reason(tmp_path):
    path = _jsonl(tmp_path / "my_chat.jsonl", [*chat_rows(12), *BAD_CHAT.values()], ('{"messages": [',))
    model, summary = _sft(tmp_path, [{"path": str(path)}])
    assert summary["steps"] == 2
    report = summary["data"]
    _reconciles(report)
    assert report["rows_in"] == 12 + len(BAD_CHAT) + 1 and report["used"] == 12
    assert report["quarantine_reasons"] == {**{r: 1 for r in BAD_CHAT}, "malformed_json": 1}
    assert summary["train_examples"] + summary["val_examples"] == 12
    rows = {q["reason"]: q for q in report["quarantined_rows"]}
    assert rows["malformed_json"]["row"] == 12 + len(BAD_CHAT) + 1  # JSONL lines are numbered from 1
    assert rows["unknown_role"]["file"] == str(path) and "robot" in rows["unknown_role"]["detail"]
    params = user_data.ChatData([], [], [], []).tracking_params()
    assert set(params["data"]) == {"rows_in", "used", "capped", "quarantined", "quarantine_reasons", "sources"}


def test_a_source_without_a_usable_row_stops_before_training(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", list(BAD_CHAT.values()))
    synth = {"chat": lambda: chat_rows(10)}
    with pytest.raises(
        ValueError, match=r"stage t: sources\[1\] \(.*bad\.jsonl\): no usable sft row among its 6 .*unknown_role"
    ):
        _sft(tmp_path, ["chat", {"path": str(path)}], synth)
    assert not (tmp_path / "ck").exists()  # nothing trained, no checkpoint directory


def _preference_folder(tmp_path) -> Path:
    """A folder of a Parquet file (string pairs, two bad) and a JSONL (conversational pairs)."""
    folder = tmp_path / "prefs"
    folder.mkdir()
    rows = preference_rows(10)
    rows.append({"prompt": "same?", "chosen": "yes", "rejected": "yes"})
    rows.append({"prompt": "empty?", "chosen": "", "rejected": "no"})
    pq.write_table(pa.Table.from_pylist(rows), folder / "a.parquet")
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    bot = lambda text: {"role": "assistant", "content": text}  # noqa: E731
    conversational = [
        {"prompt": [user(f"hi {i}"), bot("hello"), user("sum?")], "chosen": [bot(f"{i + 1}")], "rejected": [bot("?")]}
        for i in range(4)
    ]
    implicit = [{"chosen": [user(f"q{i}"), bot("right")], "rejected": [user(f"q{i}"), bot("wrong")]} for i in range(4)]
    _jsonl(folder / "b.jsonl", [*conversational, *implicit, {"prompt": "only chosen", "chosen": "x"}])
    return folder


def test_dpo_on_a_parquet_and_jsonl_folder_in_all_three_conventions(tmp_path):
    tok = chat_tokenizer()
    params = stage(tmp_path / "ck", sources=[{"path": str(_preference_folder(tmp_path))}], beta=0.1, max_seq_len=64)
    params["train"]["max_steps"] = 2
    _, summary = nodes.train_dpo(nano_model(vocab_size=len(tok)), tok, {}, params, stage="p")
    assert summary["steps"] == 2 and "eval_reward_accuracies" in summary
    report = summary["data"]
    _reconciles(report)
    assert report["used"] == 10 + 4 + 4
    assert report["quarantine_reasons"] == {
        "chosen_equals_rejected": 1,
        "empty_assistant_turn": 1,
        "missing_field": 1,
    }
    assert summary["train_pairs"] + summary["val_pairs"] == 18


def test_preference_rows_render_through_the_dpo_renderer_with_labels_on_the_answer_only():
    tok = chat_tokenizer()
    row = preference_rows(1)[0]
    got = build_preference_example(*user_data.dpo_row(row), tok, 128)
    want = build_preference_example(row["prompt"], row["chosen"], row["rejected"], tok, 128)
    assert all(torch.equal(got[k], want[k]) for k in want)
    # a multi-turn prompt: its assistant turn is context, only the answer is labelled
    prompt = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "EARLIER"},
        {"role": "user", "content": "b"},
    ]
    ex = build_preference_example(prompt, "LATER", "NOPE", tok, 128)
    labelled = tok.decode(ex["chosen_labels"][ex["chosen_labels"] != -100])
    assert "LATER" in labelled and "EARLIER" not in labelled
    # implicit prompt: the common prefix of the two conversations
    implicit = {"chosen": [*prompt, {"role": "assistant", "content": "LATER"}], "rejected": [*prompt[:2]]}
    with pytest.raises(user_data.BadRow) as bad:
        user_data.dpo_row(implicit)
    assert bad.value.reason == "no_assistant_turn"


def test_tools_column_and_tool_calls_render_as_the_synth_conversations_carry_them():
    row = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "calc", "arguments": '{"e": "2+2"}'}}],
            },
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "4"},
        ],
        "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}],
    }
    messages = user_data.sft_row(row)
    tools_open, _ = block("tools")
    call_open, call_close = block("tool_call")
    assert (
        messages[0]["role"] == "system"
        and tools_open in messages[0]["content"]
        and '"name": "calc"' in messages[0]["content"]
    )
    assert messages[2]["content"] == f'{call_open}\n{{"name": "calc", "arguments": {{"e": "2+2"}}}}\n{call_close}'
    ex = build_sft_example(messages, chat_tokenizer(), 256)
    assert (ex["labels"] != -100).any()


def test_mixed_synth_and_user_sources_with_weight_and_max_samples(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", chat_rows(20))
    synth = {"chat": lambda: chat_rows(10)}
    sources = ["chat", {"path": str(path), "weight": 2.0, "max_samples": 15}]
    _, summary = _sft(tmp_path, sources, synth, eval={"max_batches": 1, "val_fraction": 0.2})
    report = summary["data"]
    _reconciles(report)
    assert [(s["rows_in"], s["used"], s["capped"]) for s in report["sources"]] == [(10, 10, 0), (20, 15, 5)]
    # 25 examples, 5 held out; the user source's training examples count twice
    validated = StageParams.model_validate(stage(tmp_path, sources=sources)).sources
    data = user_data.load_chat_data("t", "sft", validated, synth, chat_tokenizer(), 64, 0)
    train, _ = split_examples(list(range(25)), 0.2, None, 0)
    mine = sum(data.source_of[i] == 1 for i in train)
    assert summary["val_examples"] == 5 and summary["train_examples"] == (20 - mine) + 2 * mine


def test_the_fingerprint_follows_the_file_content(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", chat_rows(12))
    _, first = _sft(tmp_path, [{"path": str(path)}])
    _, again = _sft(tmp_path, [{"path": str(path)}])
    assert again["fingerprint"] == first["fingerprint"] and again["resumed_from"] is not None
    rows = chat_rows(12)
    rows[3]["messages"][1]["content"] = "The answer is unknown."
    _jsonl(path, rows)
    _, edited = _sft(tmp_path, [{"path": str(path)}])
    assert edited["fingerprint"] != first["fingerprint"] and edited["resumed_from"] is None


def test_a_save_to_disk_folder_is_read_with_its_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(chat_rows(12)), "test": datasets.Dataset.from_list(chat_rows(3))}
    ).save_to_disk(str(tmp_path / "saved"))
    _, summary = _sft(tmp_path, [{"path": str(tmp_path / "saved"), "split": "train"}])
    assert summary["data"]["rows_in"] == 12 and summary["data"]["used"] == 12


def test_sources_are_checked_before_work(tmp_path, monkeypatch):
    base = stage(tmp_path / "ck", max_seq_len=64)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ValueError, match=r"sources\[1\]\.hf: 'org/name' is a Hugging Face dataset id but Hugging Face is offline"
    ):
        StageParams.model_validate({**base, "sources": ["chat", {"hf": "org/name"}]}).check_kind("sft")
    with pytest.raises(ValueError, match=r"sources\[0\]\.path: .*nope\.jsonl does not exist"):
        StageParams.model_validate({**base, "sources": [{"path": str(tmp_path / "nope.jsonl")}]}).check_kind("sft")
    with pytest.raises(ValueError, match="exactly one of path"):
        StageParams.model_validate({**base, "sources": [{"path": "a", "hf": "b"}]})
    with pytest.raises(ValueError, match="weight"):
        StageParams.model_validate({**base, "sources": [{"path": "a", "weight": 0}]})
    # a disabled stage is not checked; the node refuses the offline id before reading anything
    StageParams.model_validate({**base, "enabled": False, "sources": [{"hf": "org/name"}]}).check_kind("sft")
    with pytest.raises(ValueError, match="offline"):
        _sft(tmp_path, [{"hf": "org/name"}])


def test_the_finetune_group_names_the_stage_key(tmp_path, monkeypatch):
    import yaml

    from xoron_pipelines.validation import ParameterError, validate_group

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    values = yaml.safe_load((ROOT / "conf/base/parameters_finetune.yml").read_text())["finetune"]
    values["stages"]["tools"]["sources"] = ["chat", {"hf": "org/name", "split": "train"}]
    with pytest.raises(ParameterError, match=r"stages\.tools: sources\[1\]\.hf: 'org/name'.*offline"):
        validate_group("finetune", values)
    values["stages"]["tools"]["sources"] = ["chat", {"pth": "typo.jsonl"}]
    with pytest.raises(ParameterError, match=r"finetune\.stages\.tools\.sources\[1\]\.dataset\.pth: Extra inputs"):
        validate_group("finetune", values)


def _readme_yaml() -> list[dict]:
    """The YAML blocks of README.md's "Fine-tuning on your own conversations" subsection."""
    import re

    import yaml

    text = (ROOT / "README.md").read_text()
    section = text.split("### Fine-tuning on your own conversations", 1)[1].split("\n## ", 1)[0]
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]


def _merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def test_the_readme_example_validates_and_its_files_are_read(tmp_path, monkeypatch):
    import numpy as np
    import yaml

    from xoron_pipelines.validation import validate_all

    blocks = _readme_yaml()
    assert [list(b) for b in blocks] == [["finetune"], ["pretrain"]]
    monkeypatch.chdir(tmp_path)  # the example's relative paths, made here
    _jsonl(Path("data/01_raw/my_chat.jsonl"), chat_rows(6))
    _jsonl(Path("data/01_raw/support/a.jsonl"), chat_rows(4))
    Path("data/01_raw/my_prefs.parquet").parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(preference_rows(5)), "data/01_raw/my_prefs.parquet")
    Path("data/processed").mkdir(parents=True)
    for name in ("code_train_large.npy", "code_val_large.npy"):
        np.save(Path("data/processed") / name, np.arange(64, dtype=np.uint16))
    groups = {}
    for example in blocks:
        for group, values in example.items():
            base = yaml.safe_load((ROOT / f"conf/base/parameters_{group}.yml").read_text())[group]
            groups[group] = _merged(base, values)
    validated = validate_all(groups)
    tools = validated["finetune"].stages["tools"]
    synth = {"chat": lambda: chat_rows(3)}
    data = user_data.load_chat_data("tools", "sft", tools.sources, synth, chat_tokenizer(), 256, 0)
    assert [c.used for c in data.counts] == [3, 6, 4]
    prefs = validated["finetune"].stages["preference"].sources
    assert len(user_data.load_chat_data("preference", "dpo", prefs, {}, chat_tokenizer(), 256, 0).examples) == 5
    assert validated["pretrain"].stages["code"].token_files.paths()["train"] == Path(
        "data/processed/code_train_large.npy"
    )


def test_the_counts_reach_the_stage_mlflow_run(tmp_path):
    from tests.helpers import fresh_tracking_store

    path = _jsonl(tmp_path / "mine.jsonl", [*chat_rows(10), BAD_CHAT["unknown_role"]])
    tracking = {"enabled": True, "log_model": False, "log_tokenizer": False, "plots": False}
    with fresh_tracking_store(tmp_path) as client:
        _, summary = _sft(tmp_path, [{"path": str(path)}], tracking=tracking)
        params = client.get_run(summary["mlflow_run_id"]).data.params
    assert params["data.rows_in"] == "11" and params["data.used"] == "10" and params["data.quarantined"] == "1"
    assert params["data.quarantine_reasons.unknown_role"] == "1"
    assert params["data.sources.0.source"] == str(path)
