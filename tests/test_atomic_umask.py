"""Outputs follow the user's umask: every atomic writer publishes files ``0o666 & ~umask`` and
directories ``0o777 & ~umask`` (tempfile's forced 0600 / 0700 never reach an output), and a
failed write leaves neither a partial target nor a staging file behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from xoron_pipelines.atomic import atomic_dir, atomic_file, atomic_open, current_umask


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_tree(root: Path, mask: int) -> int:
    """Every directory under (and including) ``root`` is 0o777 & ~mask, every file 0o666 & ~mask
    (a ``.sh`` script 0o777 & ~mask); returns how many files were checked."""
    files = 0
    assert _mode(root) == 0o777 & ~mask, root
    for path in root.rglob("*"):
        expected = (0o777 if path.is_dir() or path.suffix == ".sh" else 0o666) & ~mask
        assert _mode(path) == expected, (path, oct(_mode(path)), oct(expected))
        files += path.is_file()
    return files


def _no_leftovers(parent: Path, name: str) -> None:
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{name}")] == []


def test_current_umask_reads_without_changing(umask):
    assert current_umask() == umask
    assert current_umask() == umask  # unchanged by the first read


def test_atomic_primitives_follow_the_umask(tmp_path, umask):
    with atomic_file(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic_open(tmp_path / "b.json") as fh:
        fh.write("{}")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner.txt").write_text("y")
        (tmp / "inner.txt").chmod(0o600)  # what safetensors' save_file leaves
        (tmp / "sub").mkdir()
        (tmp / "sub" / "run.sh").write_text("#!/bin/sh\n")
        (tmp / "sub" / "run.sh").chmod(0o700)
    assert _mode(tmp_path / "a.bin") == 0o666 & ~umask
    assert _mode(tmp_path / "b.json") == 0o666 & ~umask
    assert _mode(tmp_path / "d" / "sub" / "run.sh") == 0o777 & ~umask  # an executable stays executable
    assert _assert_tree(tmp_path / "d", umask) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json", "d"]  # no staging left


def test_failed_atomic_writes_keep_the_previous_output(tmp_path):
    (tmp_path / "f.txt").write_text("old")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "f.txt") as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("boom")
    assert (tmp_path / "f.txt").read_text() == "old"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"]


def test_dataset_and_cache_writers_follow_the_umask(tmp_path, umask):
    from xoron_pipelines.datasets.jsonl import JSONLinesDataset
    from xoron_pipelines.datasets.latent_model import LatentArtifact, LatentModelDataset
    from xoron_pipelines.datasets.model import XoronModelDataset
    from xoron_pipelines.evaluation.task_files import write_task
    from xoron_pipelines.latent.cache import write_json

    JSONLinesDataset(str(tmp_path / "rows.jsonl")).save([{"a": 1}, {"a": 2}])
    write_task(tmp_path / "task.jsonl", [{"q": 1}])
    write_json(tmp_path / "cache" / "meta.json", {"k": 1})
    LatentModelDataset(str(tmp_path / "latent")).save(
        LatentArtifact({"weights_file": "w.safetensors"}, {"w": torch.zeros(2)})
    )

    class Saver:  # what XoronModelDataset.save needs of a model
        def save_pretrained(self, path, safe_serialization=True):
            (Path(path) / "config.json").write_text("{}")
            (Path(path) / "model.safetensors").write_bytes(b"")

    XoronModelDataset(str(tmp_path / "model")).save(Saver())
    for name in ("rows.jsonl", "task.jsonl", "cache/meta.json"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert json.loads((tmp_path / "cache" / "meta.json").read_text()) == {"k": 1}
    assert _assert_tree(tmp_path / "latent", umask) == 2
    assert _assert_tree(tmp_path / "model", umask) == 2
    for name in ("rows.jsonl", "task.jsonl", "latent", "model"):
        _no_leftovers(tmp_path, name)


def test_checkpoints_and_shard_sets_follow_the_umask(tmp_path, umask):
    import pyarrow as pa

    from xoron_pipelines.datasets.parquet_shards import ParquetShardsDataset
    from xoron_pipelines.training.checkpoint import Snapshot, write_checkpoint

    final = write_checkpoint(tmp_path / "ckpt", Snapshot.take(3, {"w": torch.ones(2)}, trainer={"lr": 0.1}))
    assert _assert_tree(final, umask) >= 3  # model.safetensors (0600 from safetensors), trees, manifest
    ParquetShardsDataset(str(tmp_path / "shards")).save(pa.table({"x": [1, 2]}))
    assert _assert_tree(tmp_path / "shards", umask) == 1
    _no_leftovers(tmp_path, "shards")


def test_model_export_directories_follow_the_umask(tmp_path, umask):
    from xoron_pipelines.model import interop
    from xoron_pipelines.model.config import get_config
    from xoron_pipelines.model.model import XoronForCausalLM

    torch.manual_seed(0)
    model = XoronForCausalLM(get_config("nano")).float().eval()
    interop.save_xoron(model, tmp_path / "xoron")
    interop.save_native(model, tmp_path / "native")
    assert _assert_tree(tmp_path / "xoron", umask) >= 2
    assert _assert_tree(tmp_path / "native", umask) >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native", "xoron"]


def test_logged_model_artifacts_follow_the_umask(tmp_path, umask):
    import shutil

    import mlflow
    from safetensors.torch import save_file

    from tests.helpers import _mlflow_template_db
    from xoron_pipelines.tracking import log_saved

    class Saver:  # safetensors' save_file writes 0600 whatever the umask
        def save_pretrained(self, path):
            save_file({"w": torch.zeros(2)}, str(Path(path) / "model.safetensors"))

    db = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_template_db(), db)
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    experiment = mlflow.create_experiment("umask", artifact_location=(tmp_path / "artifacts").as_uri())
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            log_saved(Saver(), "model")
    finally:
        mlflow.set_tracking_uri(None)
    [logged] = (tmp_path / "artifacts").rglob("model.safetensors")
    assert run.info.run_id in str(logged) and _mode(logged) == 0o666 & ~umask
