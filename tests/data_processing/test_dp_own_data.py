"""One's own corpus: conf/local merged into conf/base key by key (errors name both files),
sources without a category, the csv format and ``format: json`` on JSON Lines, an existing
tokenizer (``tokenizer_name``) with the project's special tokens added."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from dp_helpers import make_params, prose_docs, write_jsonl
from kedro.config import OmegaConfigLoader

from tests.helpers import PROJECT_ROOT
from xoron_pipelines.data.ledger import build_ledger
from xoron_pipelines.validation import ParameterError, parameter_files, validate_all

NO_DEDUP = {"exact": False, "near_dup": False}


def _loader(tmp_path: Path, local: dict, runtime: dict | None = None) -> OmegaConfigLoader:
    """The project's conf/base plus ``local`` as conf/local/parameters.yml, loaded with the
    project's CONFIG_LOADER_ARGS (settings.py), as `kedro run` loads them."""
    from xoron_pipelines.settings import CONFIG_LOADER_ARGS

    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf" / "base", conf / "base")
    (conf / "local").mkdir()
    (conf / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
    return OmegaConfigLoader(str(conf), runtime_params=runtime or {}, **CONFIG_LOADER_ARGS)


def _base(group: str) -> dict:
    return yaml.safe_load((PROJECT_ROOT / "conf" / "base" / f"parameters_{group}.yml").read_text())[group]


def test_a_local_override_of_one_nested_key_keeps_the_rest_of_the_group(tmp_path: Path):
    base_dp, base_pt = _base("data_processing"), _base("pretrain")
    local = {
        "data_processing": {"tokenizer": {"vocab_size": 9000}},
        "pretrain": {"stages": {"language": {"train": {"learning_rate": 1.0e-3}}}},
    }
    loader = _loader(tmp_path, local, runtime={"data_processing": {"packing": {"max_seq_len": 128}}})
    params = loader["parameters"]
    dp = params["data_processing"]
    assert dp["tokenizer"] == {**base_dp["tokenizer"], "vocab_size": 9000}
    assert dp["sources"] == base_dp["sources"] and dp["stage_mixes"] == base_dp["stage_mixes"]
    assert dp["packing"] == {**base_dp["packing"], "max_seq_len": 128}  # --params a.b.c merges too
    language = params["pretrain"]["stages"]["language"]
    assert language["train"] == {**base_pt["stages"]["language"]["train"], "learning_rate": 1.0e-3}
    validated = validate_all(params, files=parameter_files(loader))
    assert validated["pretrain"].stages["language"].train.learning_rate == 1.0e-3
    assert (
        validated["pretrain"].stages["language"].train.max_steps == base_pt["stages"]["language"]["train"]["max_steps"]
    )
    assert validated["data_processing"].tokenizer.vocab_size == 9000
    assert [s.name for s in validated["data_processing"].sources] == [s["name"] for s in base_dp["sources"]]


def test_lists_are_replaced_and_null_removes_a_section(tmp_path: Path):
    mine = [{"name": "mine", "path": "data/01_raw/mine.jsonl", "text_field": "text"}]
    params = _loader(tmp_path, {"data_processing": {"sources": mine, "stage_mixes": None}})["parameters"]
    assert params["data_processing"]["sources"] == mine and params["data_processing"]["stage_mixes"] is None
    assert params["data_processing"]["tokenizer"] == _base("data_processing")["tokenizer"]


def test_a_bad_key_names_the_files_the_group_comes_from(tmp_path: Path):
    loader = _loader(tmp_path, {"pretrain": {"stages": {"language": {"train": {"learning_rat": 1.0e-3}}}}})
    with pytest.raises(ParameterError) as err:
        validate_all(loader["parameters"], files=parameter_files(loader))
    message = str(err.value)
    assert "pretrain.stages.language.train.learning_rat" in message
    assert "conf/base/parameters_pretrain.yml + conf/local/parameters.yml" in message
    # a group only conf/base sets is not blamed on conf/local
    assert parameter_files(loader)["synth"] == ["conf/base/parameters_synth.yml"]


def _kept(params) -> list[dict]:
    return [r for r in build_ledger(params).read().to_pylist() if r["status"] == "kept"]


def _all(params) -> list[dict]:
    return build_ledger(params).read().to_pylist()


def test_a_source_without_category_is_general_text_or_conversation(tmp_path: Path):
    docs = prose_docs(3)
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": d} for d in docs])
    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": d}]} for d in docs])
    params = make_params(
        [
            {"name": "t", "path": str(text), "text_field": "text"},
            {"name": "c", "path": str(chat), "messages_field": "messages"},
        ],
        dedup=NO_DEDUP,
    )
    assert [(s.category, s.modality) for s in params.sources] == [("document", "text"), ("conversation", "text")]
    assert {(r["source"], r["category"]) for r in _kept(params)} == {("t", "document"), ("c", "conversation")}
    assert make_params([{"name": "t", "path": str(text), "text_field": "text"}], categories=["document"]).sources


def test_csv_format(tmp_path: Path):
    """Header row; text_field / text_template over columns; quoted commas and newlines; BOM;
    rows numbered from 0; an empty cell is filtered as empty, a missing column or invalid UTF-8
    quarantined, an oversized row quarantined."""
    docs = prose_docs(4, seed=3)
    path = tmp_path / "corpus.csv"
    body = (
        (
            "\ufeffid,title,text\n"
            f'1,First,"{docs[0]}, with a comma\nand a second line"\n'
            f"2,Second,{docs[1]}\n"
            "3,Empty,\n"
            "4,Short\n"
            f"5,Big,{'x' * 3000}\n"
        ).encode()
        + b"6,Bad,caf\xe9 latin-1 text long enough\n"
        + f"7,Last,{docs[2]}\n".encode()
    )
    path.write_bytes(body)
    source = {"name": "csv", "path": str(path), "format": "csv", "text_field": "text"}
    rows = _all(make_params([source], dedup=NO_DEDUP, cleaning={"max_record_bytes": 2000}))
    fate = [(r["row"], r["status"], r["reason"]) for r in rows]
    assert fate == [
        (0, "kept", ""),
        (1, "kept", ""),
        (2, "quarantined", "empty"),
        (3, "quarantined", "missing_field"),
        (4, "quarantined", "oversized"),
        (5, "quarantined", "invalid_utf8"),
        (6, "kept", ""),
    ]
    assert rows[0]["text"] == f"{docs[0]}, with a comma\nand a second line" and rows[6]["text"] == docs[2]
    assert all(r["file"] == str(path) for r in rows)
    templated = {**source, "text_field": None, "text_template": "{title}: {text}"}
    kept = _kept(make_params([templated], dedup=NO_DEDUP))
    assert kept[1]["text"] == f"Second: {docs[1]}"


def test_format_json_reads_an_array_a_data_object_and_json_lines(tmp_path: Path):
    """What the Hugging Face json loader reads: an array (rows from 0), {"data": [...]} and JSON
    Lines (rows from 1, a bad line quarantined alone), also a .jsonl file given as format: json."""
    docs = prose_docs(6, seed=5)
    array = tmp_path / "a.json"
    array.write_text(json.dumps([{"text": d} for d in docs[:2]], indent=2))
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"data": [{"text": docs[2]}]}))
    lines = tmp_path / "l.jsonl"
    lines.write_text(f"{json.dumps({'text': docs[3]})}\n{{broken\n{json.dumps({'text': docs[4]})}\n")
    sources = [
        {"name": n, "path": str(p), "format": "json", "text_field": "text"}
        for n, p in (("array", array), ("data", data), ("lines", lines))
    ]
    rows = _all(make_params(sources, dedup=NO_DEDUP))
    got = [(r["source"], r["row"], r["status"], r["reason"], r["text"]) for r in rows]
    assert got == [
        ("array", 0, "kept", "", docs[0]),
        ("array", 1, "kept", "", docs[1]),
        ("data", 0, "kept", "", docs[2]),
        ("lines", 1, "kept", "", docs[3]),
        ("lines", 2, "quarantined", "malformed_json", None),
        ("lines", 3, "kept", "", docs[4]),
    ]
    # a JSON Lines file is read line by line exactly as format: jsonl reads it
    as_jsonl = _all(make_params([{**sources[2], "format": "jsonl"}], dedup=NO_DEDUP))
    assert [(r["row"], r["status"], r["text"]) for r in as_jsonl] == [(g[1], g[2], g[4]) for g in got[3:]]


def _small_tokenizer(texts: list[str], specials: list[str]):
    """A byte-level BPE tokenizer of ~300 ids that knows only ``specials`` of the registry."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@pytest.mark.parametrize("layout", ["tokenizer.json", "save_pretrained"])
def test_tokenizer_name_uses_an_existing_tokenizer_with_the_projects_special_tokens(tmp_path: Path, layout):
    from transformers import PreTrainedTokenizerFast

    from xoron_pipelines.data.tokenizer_training import special_tokens
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset
    from xoron_pipelines.pipelines.data_processing.nodes import train_tokenizer
    from xoron_pipelines.tokens import BOS_TOKEN, CHAT_TEMPLATE, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN

    docs = prose_docs(60, seed=9)
    tok = _small_tokenizer(docs, ["<|endoftext|>", BOS_TOKEN])
    path = tmp_path / "mine"
    path.mkdir()
    if layout == "tokenizer.json":
        tok.save(str(path / "tokenizer.json"))
    else:
        PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(path))
    before = tok.encode(docs[0]).ids

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in docs])
    params = make_params(
        [{"name": "c", "path": str(corpus), "text_field": "text"}], tokenizer_name=str(path), dedup=NO_DEDUP
    )
    ledger = build_ledger(params)
    hf, metrics = train_tokenizer(ledger, params)
    registry = special_tokens()
    assert metrics["tokenizer.added_special_tokens"]["value"] == len(registry) - 1  # all but its BOS
    assert metrics["tokenizer.vocab_size"]["value"] == len(hf) == 300 + len(registry) - 1
    # its own vocabulary is unchanged; every registry token is one id, the new ones after it
    assert hf.encode(docs[0], add_special_tokens=False) == before
    ids = {t: hf.encode(t, add_special_tokens=False) for t in registry}
    assert all(len(v) == 1 for v in ids.values()), {t: v for t, v in ids.items() if len(v) != 1}
    assert ids[BOS_TOKEN] == [tok.token_to_id(BOS_TOKEN)]
    assert sorted(v[0] for t, v in ids.items() if t != BOS_TOKEN) == list(range(300, 300 + len(registry) - 1))
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN)
    assert hf.chat_template == CHAT_TEMPLATE and hf.model_max_length == params.packing.max_seq_len
    # saved through the catalog dataset and loaded back, it is the same tokenizer
    ds = HFTokenizerDataset(str(tmp_path / "out"))
    ds.save(hf)
    back = ds.load()
    assert back.get_vocab() == hf.get_vocab() and back.bos_token_id == hf.bos_token_id
    assert back.encode(docs[1], add_special_tokens=False) == hf.encode(docs[1], add_special_tokens=False)
    # and the corpus packs with it: a BOS (the registry's) per document, every id within its vocabulary
    from xoron_pipelines.data.packing import tokenize_and_pack

    train, val, manifest = tokenize_and_pack(ledger, back, params)
    assert manifest["special_ids"]["bos"] == back.bos_token_id and manifest["vocab_size"] == len(back)
    rows = train.read().column("input_ids").to_pylist() + val.read().column("input_ids").to_pylist()
    assert sum(r.count(back.bos_token_id) for r in rows) == len(docs)
    assert max(max(r) for r in rows) < len(back)


def test_tokenizer_name_errors_name_the_knob_before_any_work(tmp_path: Path):
    from xoron_pipelines.data.tokenizer_training import load_existing

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in prose_docs(3)])
    source = [{"name": "c", "path": str(corpus), "text_field": "text"}]
    # offline (the test suite sets HF_HUB_OFFLINE=1), a hub id not in the cache
    with pytest.raises(ValueError, match=r"data_processing.tokenizer_name='no-such-org/no-such-tok'.*offline"):
        make_params(source, tokenizer_name="no-such-org/no-such-tok")
    with pytest.raises(ValueError, match=r"data_processing.tokenizer_name='no-such-org/no-such-tok'.*offline"):
        load_existing("no-such-org/no-such-tok")
    with pytest.raises(ValueError, match=r"data_processing.tokenizer_name='./missing/tok': no such file or directory"):
        make_params(source, tokenizer_name="./missing/tok")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="neither tokenizer_config.json nor tokenizer.json"):
        load_existing(str(empty))


def test_synth_raw_loads_empty_before_synth_and_only_synth_sources_need_it(tmp_path: Path):
    """The catalog's synth_raw (missing_ok) loads as an empty mapping when synth has not run; the
    data_processing node then runs on other sources, and with a synth source selected it stops
    with a DatasetError naming synth_raw, caused by the missing folder (the CLI's "run ... first")."""
    from kedro.io import DatasetError

    from xoron_pipelines.datasets.partitions import LabelledPartitionedDataset
    from xoron_pipelines.pipelines.data_processing.nodes import build_ledger as build_ledger_node

    catalog = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "catalog.yml").read_text())["synth_raw"]
    assert catalog["missing_ok"] is True
    config = {k: v for k, v in catalog.items() if k != "type"}
    config["path"] = str(tmp_path / "synth")
    empty = LabelledPartitionedDataset(**config).load()
    assert empty == {}
    with pytest.raises(DatasetError, match="No partitions"):
        LabelledPartitionedDataset(**{**config, "missing_ok": False}).load()

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in prose_docs(5)])
    own = {"name": "own", "path": str(corpus), "text_field": "text"}
    ledger = build_ledger_node(make_params([own], dedup=NO_DEDUP), empty)
    assert [r["status"] for r in ledger.read().to_pylist()] == ["kept"] * 5
    synth = {"name": "s", "path": "chat", "format": "synth", "text_field": "text"}
    with pytest.raises(
        DatasetError, match=r"synth_raw: the selected sources \['s'\].*kedro run --pipeline synth"
    ) as err:
        build_ledger_node(make_params([own, synth]), empty)
    assert isinstance(err.value.__cause__, FileNotFoundError) and "synth" in err.value.__cause__.filename


def test_kedro_run_names_base_and_local_files_of_a_bad_key(kedro_project: Path):
    """Through a real KedroSession (the validation hook reads the session's config loader)."""
    from tests.helpers import run_pipeline

    local = {"data_processing": {"tokenizer": {"vocab_sise": 9000}}}
    (kedro_project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
    with pytest.raises(ParameterError) as err:
        run_pipeline(kedro_project, "data_processing")
    message = str(err.value)
    assert "data_processing.tokenizer.vocab_sise" in message
    assert "conf/base/parameters_data_processing.yml + conf/local/parameters.yml" in message
