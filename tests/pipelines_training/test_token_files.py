"""Seed 001's .npy token files (``token_files``) as the data of a causal_lm stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.pipelines_training.stage_helpers import stage
from tests.training.finetune_helpers import nano_model
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training import token_files
from xoron_pipelines.training.schema import StageParams

SEQ = 16


def _files(tmp_path, train_dtype=np.uint16, n_train=40 * SEQ + 5):
    rng = np.random.default_rng(0)
    data = tmp_path / "processed"
    data.mkdir()
    train = rng.integers(0, 512, n_train).astype(train_dtype)
    val = rng.integers(0, 512, 8 * SEQ).astype(np.int32)
    np.save(data / "code_train.npy", train)
    np.save(data / "code_val.npy", val)
    return data, train, val


def _lm(tmp_path, files: dict, **overrides):
    params = stage(tmp_path / "ck", token_files=files, train={"max_steps": 2, "batch_size": 4}, **overrides)
    return nodes.train_causal_lm(nano_model(max_position_embeddings=SEQ), None, None, None, None, params, stage="s")


def test_a_stage_trains_on_the_ids_of_its_npy_files(tmp_path, monkeypatch):
    data, train, _ = _files(tmp_path)
    seen = []
    batch = token_files.NpyTokenSource.batch

    def record(self, epoch, index):
        out = batch(self, epoch, index)
        if self.shuffle:  # the training source (validation is read in order)
            seen.append(out["input_ids"])
        return out

    monkeypatch.setattr(token_files.NpyTokenSource, "batch", record)
    files = {"data_dir": str(data), "data_file": "code_train.npy", "val_file": "code_val.npy"}
    _, summary = _lm(tmp_path, files)
    assert summary["steps"] == 2 and summary["train_rows"] == 40  # the 5 trailing ids make no row
    assert summary["tokens_seen"] == 2 * 4 * SEQ
    rows = {tuple(train[k * SEQ : (k + 1) * SEQ].tolist()) for k in range(40)}
    assert len(seen) == 2 and all(tuple(r.tolist()) in rows for b in seen for r in b)
    assert len({tuple(r.tolist()) for b in seen for r in b}) == 8  # 8 distinct rows of the file


def test_max_samples_and_a_folder_of_files(tmp_path):
    data, train, val = _files(tmp_path)
    folder = tmp_path / "shards"
    folder.mkdir()
    np.save(folder / "a.npy", train[: 10 * SEQ + 3])  # rows never span two files
    np.save(folder / "b.npy", train[10 * SEQ + 3 :].astype(np.int32))
    source = token_files.NpyTokenSource(token_files.npy_files(folder), SEQ, 512, 4, seed=0)
    assert source.num_rows == 10 + (30 * SEQ + 2) // SEQ
    assert np.array_equal(source.row(10), train[10 * SEQ + 3 : 11 * SEQ + 3])
    capped = token_files.NpyTokenSource(token_files.npy_files(folder), SEQ, 512, 4, seed=0, max_samples=12)
    assert capped.num_rows == 12 and len(capped) == 3
    _, summary = _lm(tmp_path, {"data_file": str(folder), "val_file": str(data / "code_val.npy")}, max_samples=12)
    assert summary["train_rows"] == 12


def test_bad_files_are_refused_naming_the_file_and_index(tmp_path):
    data, train, _ = _files(tmp_path)
    bad = train.astype(np.int32)
    bad[37] = 512
    np.save(data / "bad.npy", bad)
    with pytest.raises(
        ValueError, match=r"bad\.npy holds id 512 at index 37, outside the model's vocabulary \[0, 512\)"
    ):
        token_files.open_ids(data / "bad.npy", 512)
    np.save(data / "float.npy", train.astype(np.float32))
    with pytest.raises(ValueError, match="1-D integer array"):
        token_files.open_ids(data / "float.npy", 512)
    np.save(data / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy is not a plain \.npy array"):
        token_files.open_ids(data / "obj.npy", 512)


def test_token_files_knob_is_validated(tmp_path):
    base = stage(tmp_path / "ck")
    with pytest.raises(ValueError, match=r"token_files\.val_file: .*missing\.npy does not exist"):
        StageParams.model_validate(
            {**base, "token_files": {"data_dir": str(tmp_path), "data_file": ".", "val_file": "missing.npy"}}
        ).check_kind("causal_lm")
    with pytest.raises(ValueError, match="token_files \\(causal_lm only"):
        StageParams.model_validate(
            {**base, "sources": ["chat"], "token_files": {"data_file": ".", "val_file": "."}}
        ).check_kind("sft")
    with pytest.raises(ValueError, match="either data_mix or token_files"):
        StageParams.model_validate(
            {**base, "data_mix": "m", "token_files": {"data_file": ".", "val_file": "."}}
        ).check_kind("causal_lm")


def test_the_fingerprint_follows_the_ids(tmp_path):
    data, train, val = _files(tmp_path)
    files = [data / "code_train.npy"]
    first = token_files.npy_fingerprint([token_files.NpyTokenSource(files, SEQ, 512, 4)])
    assert token_files.npy_fingerprint([token_files.NpyTokenSource(files, SEQ, 512, 4)]) == first
    train[3] = (train[3] + 1) % 512
    np.save(files[0], train)
    assert token_files.npy_fingerprint([token_files.NpyTokenSource(files, SEQ, 512, 4)]) != first


def test_the_source_pickles_for_distributed_workers(tmp_path):
    import pickle

    data, _, _ = _files(tmp_path)
    source = token_files.NpyTokenSource([data / "code_train.npy"], SEQ, 512, 4, seed=3, max_samples=10)
    copy = pickle.loads(pickle.dumps(source))
    assert copy._arrays is None  # re-opened (memory-mapped) on first use, not shipped
    assert all(torch.equal(copy.batch(1, i)["input_ids"], source.batch(1, i)["input_ids"]) for i in range(len(source)))
