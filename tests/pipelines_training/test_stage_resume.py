"""Resume under re-runs, moves and changed settings (stage nodes called directly, tiny data):
the fingerprint is a content hash, result-neutral knobs stay out of it, a longer run continues,
a shorter one starts afresh, ``resume_from_checkpoint`` auto / never / path, and checkpoints of
earlier configurations are kept (``keep_configurations``) or removed with a log line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tests.pipelines_training.stage_helpers import packed_shards, stage
from tests.training.finetune_helpers import chat_tokenizer, nano_model
from xoron_pipelines.datasets.parquet_shards import PackedMixes
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training.checkpoint import CorruptCheckpointError
from xoron_pipelines.training.fingerprint import tokens_fingerprint
from xoron_pipelines.training.schema import StageParams
from xoron_pipelines.training.stage import stage_fingerprint
from xoron_pipelines.training.stage_data import packed_source


@pytest.fixture()
def shards(tmp_path):
    return packed_shards(tmp_path / "train", rows=40), packed_shards(tmp_path / "val", rows=8, seed=1)


def _lm(model, shards, params):
    return nodes.train_causal_lm(
        model, None, *shards, PackedMixes(shards[0].path.parent / "no-mixes"), params, stage="s"
    )


def _fp(shards, params, model=None, tokenizer=None) -> str:
    p = StageParams.model_validate(params).check_kind("causal_lm")
    sources = [packed_source(s.path, 4, p.train.seed, p.max_samples) for s in shards]
    return stage_fingerprint(p, model or nano_model(), tokens_fingerprint(sources, tokenizer))


def _equal(a, b) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _configs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "s").iterdir())


def test_fingerprint_is_content_not_files_paths_or_cadence(tmp_path, shards):
    base = stage(tmp_path / "ck")
    reference = _fp(shards, base)
    # byte-identical re-packing elsewhere, later, with a generation marker beside the shards
    repacked = [packed_shards(tmp_path / "again" / n, rows=r, seed=s) for n, r, s in (("t", 40, 0), ("v", 8, 1))]
    (repacked[0].path / "generation.json").write_text(json.dumps({"generation": "another-id"}))
    moved = nano_model()
    moved.config._name_or_path = "/somewhere/else/data/06_models/language"  # an absolute path in the config
    same = [
        _fp(repacked, base, model=moved),
        _fp(
            shards,
            stage(
                tmp_path / "elsewhere",
                keep_configurations=1,
                tracking={"enabled": True, "plots": False},
                distributed={"nproc_per_node": 2},
                eval={"max_batches": 1, "batch_size": 2, "val_fraction": 0.2},
                train={
                    "save_steps": 1,
                    "logging_steps": 2,
                    "eval_steps": 1,
                    "keep_last_k": 1,
                    "async_checkpointing": True,
                    "resume_from_checkpoint": "never",
                    "max_steps": 9,
                },
            ),
        ),
    ]
    assert same == [reference, reference]
    changed_data = packed_shards(tmp_path / "changed", rows=40, seed=5)
    perturbed = nano_model()
    with torch.no_grad():
        perturbed.lm_head.weight[0, 0] += 1e-3
    different = {
        "learning rate": _fp(shards, stage(tmp_path / "ck", train={"learning_rate": 2e-3})),
        "seed": _fp(shards, stage(tmp_path / "ck", train={"seed": 1})),
        "max_samples": _fp(shards, stage(tmp_path / "ck", max_samples=20)),
        "data": _fp((changed_data, shards[1]), base),
        "tokenizer": _fp(shards, base, tokenizer=chat_tokenizer()),
        "weights": _fp(shards, base, model=perturbed),
    }
    assert all(v != reference for v in different.values()), different
    assert len(set(different.values())) == len(different)
    # with early stopping the evaluation cadence decides when the run stops
    assert _fp(shards, stage(tmp_path / "ck", train={"eval_steps": 1, "early_stopping_patience": 2})) != _fp(
        shards, stage(tmp_path / "ck", train={"eval_steps": 2, "early_stopping_patience": 2})
    )


def test_repacked_data_and_changed_cadence_resume(tmp_path, shards):
    first, s1 = _lm(nano_model(), shards, stage(tmp_path / "ck"))
    repacked = [packed_shards(tmp_path / "again" / n, rows=r, seed=s) for n, r, s in (("t", 40, 0), ("v", 8, 1))]
    again, s2 = _lm(nano_model(), repacked, stage(tmp_path / "ck", train={"save_steps": 1, "logging_steps": 3}))
    assert s2["fingerprint"] == s1["fingerprint"] and s2["resumed_from"].endswith("checkpoint-3")
    assert _equal(first, again)


def test_raising_max_steps_continues_from_the_newest_checkpoint(tmp_path, shards):
    constant = {"lr_scheduler": "constant"}  # the same lr at every step: continuing = one longer run
    _, s3 = _lm(nano_model(), shards, stage(tmp_path / "ck", train={**constant, "max_steps": 3}))
    longer, s5 = _lm(nano_model(), shards, stage(tmp_path / "ck", train={**constant, "max_steps": 5}))
    assert s5["fingerprint"] == s3["fingerprint"] and s5["resumed_from"].endswith("checkpoint-3")
    assert s5["steps"] == 5
    uninterrupted, _ = _lm(nano_model(), shards, stage(tmp_path / "fresh", train={**constant, "max_steps": 5}))
    assert _equal(longer, uninterrupted)


def test_lowering_max_steps_below_the_checkpoint_starts_afresh_and_keeps_it(tmp_path, shards, caplog):
    _, s5 = _lm(nano_model(), shards, stage(tmp_path / "ck", train={"max_steps": 5}))
    with caplog.at_level(logging.WARNING):
        shorter, s2 = _lm(nano_model(), shards, stage(tmp_path / "ck", train={"max_steps": 2}))
    assert s2["resumed_from"] is None and s2["steps"] == 2 and "beyond this run's 2 steps" in caplog.text
    fresh, _ = _lm(nano_model(), shards, stage(tmp_path / "fresh", train={"max_steps": 2}))
    assert _equal(shorter, fresh)
    run_dir = tmp_path / "ck" / "s" / s5["fingerprint"]
    kept = [p.name for p in run_dir.glob("superseded-*/checkpoint-*")]
    assert kept == ["checkpoint-5"]  # the longer run's checkpoint is set aside, not deleted


def test_keep_configurations_keeps_the_most_recent_ones_and_names_the_removed(tmp_path, shards, caplog):
    fps = []
    for lr in (1e-3, 2e-3, 3e-3):
        with caplog.at_level(logging.INFO):
            fps.append(
                _lm(
                    nano_model(),
                    shards,
                    stage(tmp_path / "ck", keep_configurations=2, train={"learning_rate": lr, "max_steps": 1}),
                )[1]["fingerprint"]
            )
        if lr == 2e-3:
            assert _configs(tmp_path / "ck") == sorted(fps)  # an earlier configuration is not deleted
    assert _configs(tmp_path / "ck") == sorted(fps[1:])
    assert "keep_configurations=2" in caplog.text and str(tmp_path / "ck" / "s" / fps[0]) in caplog.text
    # re-using a kept configuration makes it the most recent one
    _lm(
        nano_model(),
        shards,
        stage(tmp_path / "ck", keep_configurations=2, train={"learning_rate": 2e-3, "max_steps": 1}),
    )
    _lm(
        nano_model(),
        shards,
        stage(tmp_path / "ck", keep_configurations=2, train={"learning_rate": 4e-3, "max_steps": 1}),
    )
    assert fps[1] in _configs(tmp_path / "ck") and fps[2] not in _configs(tmp_path / "ck")


def test_resume_from_checkpoint_never_starts_afresh_without_deleting(tmp_path, shards):
    first, s1 = _lm(nano_model(), shards, stage(tmp_path / "ck"))
    again, s2 = _lm(nano_model(), shards, stage(tmp_path / "ck", train={"resume_from_checkpoint": "never"}))
    assert s2["resumed_from"] is None and s2["fingerprint"] == s1["fingerprint"]
    assert _equal(first, again)
    run_dir = tmp_path / "ck" / "s" / s1["fingerprint"]
    assert [p.name for p in run_dir.glob("superseded-*/checkpoint-*")] == ["checkpoint-3"]
    assert (run_dir / "checkpoint-3").is_dir()  # the new run's own


def test_resume_from_checkpoint_path(tmp_path, shards):
    params = stage(tmp_path / "ck", train={"save_steps": 1, "keep_last_k": 3})
    first, s1 = _lm(nano_model(), shards, params)
    run_dir = tmp_path / "ck" / "s" / s1["fingerprint"]
    saved = tmp_path / "saved-checkpoint-1"
    shutil.copytree(run_dir / "checkpoint-1", saved)  # anywhere, e.g. a backup
    again, s2 = _lm(
        nano_model(),
        shards,
        stage(tmp_path / "ck", train={"save_steps": 1, "keep_last_k": 3, "resume_from_checkpoint": str(saved)}),
    )
    assert s2["resumed_from"] == str(saved) and s2["steps"] == 3
    assert _equal(first, again)  # continued from step 1 exactly as the uninterrupted run
    assert sorted(p.name for p in run_dir.glob("superseded-*/checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


def test_resume_from_checkpoint_is_validated_before_any_step(tmp_path, shards):
    with pytest.raises(ValidationError, match=r"resume_from_checkpoint[\s\S]*does not exist"):
        StageParams.model_validate(stage(tmp_path, train={"resume_from_checkpoint": str(tmp_path / "nope")}))
    with pytest.raises(ValidationError, match="not a checkpoint directory"):
        StageParams.model_validate(stage(tmp_path, train={"resume_from_checkpoint": str(tmp_path)}))
    assert (
        StageParams.model_validate(stage(tmp_path, train={"resume_from_checkpoint": None})).train.resume_from_checkpoint
        == "auto"
    )  # seed 002's null
    _, s1 = _lm(nano_model(), shards, stage(tmp_path / "ck", train={"save_steps": 1}))
    ckpt = tmp_path / "ck" / "s" / s1["fingerprint"] / "checkpoint-2"
    model_file = ckpt / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-10])  # truncated
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        _lm(nano_model(), shards, stage(tmp_path / "other", train={"resume_from_checkpoint": str(ckpt)}))
    assert not list((tmp_path / "other").rglob("checkpoint-*"))
