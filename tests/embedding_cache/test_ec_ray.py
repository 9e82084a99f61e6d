"""``embedding_cache.engine.kind: ray``: the encoder on a local Ray cluster of 2 workers writes
the same cache (shards, row order, values, offsets index, counts) as the local engine, and a
worker killed mid-run is restarted without losing or duplicating a row."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ec_helpers import TEXTS, save_cache

import xoron_pipelines
from xoron_pipelines.latent import cache_build_ray
from xoron_pipelines.latent.cache_build import Row, plan_subset
from xoron_pipelines.pipelines.embedding_cache.params import Params

ray = pytest.importorskip("ray")

ENGINE = {"kind": "ray", "num_workers": 2, "max_retries": 2}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance of 2 CPUs for the module (ray_session joins it instead of starting one)."""
    src = str(Path(xoron_pipelines.__file__).parents[1])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": src, "HF_HUB_OFFLINE": "1"}},
    )
    yield
    ray.shutdown()


def _rows() -> list[Row]:
    """Pairs and identity rows of varied length (several chunks and batches; some truncated, some
    empty and quarantined)."""
    rows = []
    for i in range(150):
        text = " ".join(TEXTS[j % len(TEXTS)] for j in range(i % 7 + 1))
        if i % 3 == 0:
            rows.append(Row(i, text, TEXTS[i % len(TEXTS)] * (1 + i % 2)))
        elif i % 37 == 5:
            rows.append(Row(i, "   "))  # empty source: quarantined
        else:
            rows.append(Row(i, text))
    return rows


def _params(tmp: Path, **engine) -> Params:
    return Params.model_validate(
        {
            "progress": False,
            "preprocess_batch_size": 4,  # chunks of 4 x 32 = 128 rows: 2 chunks, 32 batches
            "cache_rows_per_shard": 40,  # several shards per split
            "preprocess_validation_fraction": 0.2,
            "max_seq_len": 48,  # long rows are truncated
            "max_target_len": 24,
            "cache_store_text": True,
            "cache_store_input_ids": True,
            "engine": engine or {"kind": "local"},
        }
    )


def _build(tmp: Path, tokenizer, **engine) -> Path:
    p = _params(tmp, **engine)
    save_cache(plan_subset("pretrain", _rows(), tokenizer, p), tmp)
    return tmp / "pretrain"


def _files(subset: Path) -> dict[str, bytes]:
    """Every file of a cache subset by relative path (manifest without its params, which name the engine)."""
    out = {str(f.relative_to(subset)): f.read_bytes() for f in sorted(subset.rglob("*")) if f.is_file()}
    manifest = json.loads(out.pop("manifest.json"))
    manifest.pop("params")
    out["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return out


@pytest.fixture(scope="module")
def local_cache(tmp_path_factory, decoder_tokenizer):
    return _files(_build(tmp_path_factory.mktemp("local"), decoder_tokenizer))


def test_ray_engine_writes_the_local_cache(ray_cluster, local_cache, decoder_tokenizer, tmp_path):
    files = _files(_build(tmp_path, decoder_tokenizer, **ENGINE))
    assert sorted(files) == sorted(local_cache)
    shards = [name for name in files if name.endswith(".parquet")]
    assert len(shards) >= 4 and any(name.endswith("offsets.npy") for name in files)
    for name, data in local_cache.items():
        assert files[name] == data, f"{name} differs between the local and the ray engine"
    counts = json.loads(files["manifest.json"])["counts"]
    assert counts["empty_source"] > 0 and counts["truncated_sources"] > 0 and counts["truncated_targets"] > 0
    assert (
        counts["rows_train"] + counts["rows_val"]
        == counts["texts_encoded"]
        == counts["rows_in"] - counts["empty_source"]
    )


def test_killed_worker_is_restarted_without_losing_or_duplicating_rows(
    ray_cluster, local_cache, decoder_tokenizer, tmp_path, monkeypatch
):
    marker = str(tmp_path / "died")

    class DiesOnce(cache_build_ray.ChunkEncoder):
        """Kills its worker process on the second chunk, once (the marker file says it did)."""

        def __call__(self, batch):
            if batch["chunk"][0].as_py() == 1:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            return super().__call__(batch)

    monkeypatch.setattr(cache_build_ray, "ChunkEncoder", DiesOnce)
    files = _files(_build(tmp_path / "cache", decoder_tokenizer, **ENGINE))
    assert os.path.exists(marker), "the worker was never killed"
    assert files == local_cache


def test_max_retries_zero_fails_the_build_and_writes_nothing(ray_cluster, decoder_tokenizer, tmp_path, monkeypatch):
    """``engine.max_retries`` takes effect: with 0 the killed worker is not restarted, the save
    fails and no cache is published (the build is atomic)."""
    marker = str(tmp_path / "died")

    class Dies(cache_build_ray.ChunkEncoder):
        def __call__(self, batch):
            open(marker, "w").close()
            os._exit(1)

    monkeypatch.setattr(cache_build_ray, "ChunkEncoder", Dies)
    with pytest.raises(Exception):  # noqa: B017 -- Ray wraps the actor's death in its own error types
        _build(tmp_path / "cache", decoder_tokenizer, kind="ray", num_workers=1, max_retries=0)
    assert os.path.exists(marker)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("manifest.json"))


def test_engine_is_validated_and_not_part_of_the_fingerprint(decoder_tokenizer, tmp_path):
    """The engine decides where the chunks are encoded, not what the cache holds: a cache built by
    one engine is reused by the other; an unknown engine is refused, naming the key."""
    from pydantic import ValidationError

    rows = _rows()[:10]
    local = plan_subset("pretrain", rows, decoder_tokenizer, _params(tmp_path))
    on_ray = plan_subset("pretrain", rows, decoder_tokenizer, _params(tmp_path, **ENGINE))
    assert local.fingerprint == on_ray.fingerprint
    with pytest.raises(ValidationError, match=r"engine\.kind"):
        _params(tmp_path, kind="spark")


def test_actor_pool_follows_num_workers_and_the_clusters_gpus(monkeypatch):
    """One actor per GPU when the cluster has GPUs (never more actors than GPUs), else one per
    CPU; ``engine.num_workers`` sets the pool size."""
    from xoron_pipelines.cluster import EngineSettings

    def pool(resources, **engine):
        monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
        return cache_build_ray._pool_resources(EngineSettings(kind="ray", **engine))

    assert pool({"CPU": 16.0, "GPU": 2.0}) == (2, 1.0)
    assert pool({"CPU": 16.0, "GPU": 2.0}, num_workers=4) == (2, 1.0)
    assert pool({"CPU": 16.0, "GPU": 8.0}, num_workers=3) == (3, 1.0)
    assert pool({"CPU": 2.0}) == (2, 0.0)
    assert pool({"CPU": 2.0}, num_workers=1) == (1, 0.0)
