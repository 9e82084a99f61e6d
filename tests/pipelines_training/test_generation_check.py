"""A causal-LM stage refuses a tokenizer that does not match the packed data, before any step:
another data generation, or fewer ids than the packed data uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipelines_training.stage_helpers import packed_shards, stage
from tests.training.finetune_helpers import chat_tokenizer, nano_model
from xoron_pipelines.datasets.generation import attach_generation, write_marker
from xoron_pipelines.datasets.parquet_shards import PackedMixes, ShardSet
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training.stage_data import check_tokenizer_matches, packed_source


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()  # 400 ids


def _shards(root: Path, generation: str | None, vocab: int) -> tuple[ShardSet, ShardSet]:
    out = []
    for split, rows in (("train", 16), ("val", 4)):
        s = packed_shards(root / split, rows, vocab=vocab)
        if generation is not None:
            write_marker(s.path, generation)
        out.append(ShardSet(s.path))
    return tuple(out)


def _run(tmp_path, tokenizer, shards):
    return nodes.train_causal_lm(
        nano_model(), tokenizer, *shards, PackedMixes(tmp_path / "none"), stage(tmp_path / "ckpt"), stage="language"
    )


def test_another_generation_is_refused_naming_both_paths_and_ids(tmp_path, tokenizer):
    tok = attach_generation(tokenizer, "20261206T120000Z-aaaaaaaa")
    shards = _shards(tmp_path / "packed", "20261206T110000Z-bbbbbbbb", vocab=300)
    with pytest.raises(ValueError) as info:
        _run(tmp_path, tok, shards)
    message = str(info.value)
    for part in (
        tok.name_or_path,
        str(shards[0].path),
        "20261206T120000Z-aaaaaaaa",
        "20261206T110000Z-bbbbbbbb",
        "kedro run --pipeline data_processing",
    ):
        assert part in message
    assert not (tmp_path / "ckpt").exists()  # refused before any step (nothing checkpointed)
    unmarked = _shards(tmp_path / "old", None, vocab=300)  # packed before generations: also another generation
    with pytest.raises(ValueError, match="generation None"):
        _run(tmp_path, tok, unmarked)


def test_packed_ids_beyond_the_tokenizer_are_refused(tmp_path, tokenizer):
    tok = attach_generation(tokenizer, "g1")
    shards = _shards(tmp_path / "packed", "g1", vocab=512)  # ids up to 511, tokenizer has 400
    max_id = int(packed_source(shards[0].path, 2, 0).ids.max())
    assert max_id >= len(tok)
    with pytest.raises(ValueError, match=rf"holds token id {max_id} but the tokenizer .* has only {len(tok)} ids"):
        _run(tmp_path, tok, shards)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("generation", ["g1", None])
def test_matching_tokenizer_and_data_pass(tmp_path, tokenizer, generation, caplog):
    tok = attach_generation(tokenizer, generation)
    train, val = _shards(tmp_path / "packed", generation, vocab=400)
    sources = {"train": packed_source(train.path, 2, 0), "val": packed_source(val.path, 2, 0)}
    with caplog.at_level("WARNING"):
        check_tokenizer_matches("language", tok, {"train": train, "val": val}, sources)
    assert ("no generation marker" in caplog.text) == (generation is None)
