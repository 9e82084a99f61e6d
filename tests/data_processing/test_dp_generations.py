"""data_processing outputs are published as one generation: markers, atomic exchange, failed
saves, umask, and two overlapping publishes (with the data lock: consistent; without: caught)."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from dp_helpers import jsonl_source, make_params, prose_docs, write_jsonl

from xoron_pipelines import atomic as atomic_mod
from xoron_pipelines.data.ledger import build_ledger
from xoron_pipelines.data.tokenizer_training import train_bpe, wrap
from xoron_pipelines.datasets.generation import MARKER, read_marker
from xoron_pipelines.datasets.json_file import AtomicJSONDataset
from xoron_pipelines.datasets.parquet_shards import PackedMixesDataset, ParquetShardsDataset, ShardSet
from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset
from xoron_pipelines.pipelines.data_processing.nodes import pack
from xoron_pipelines.project_lock import ProjectLock
from xoron_pipelines.training.stage_data import check_tokenizer_matches, packed_source

OUTPUTS = ("tokenizer", "packed/train", "packed/val", "packed_mixes")


@pytest.fixture(scope="module")
def small_tokenizer():
    return wrap(train_bpe(prose_docs(80, seed=3), vocab_size=300), model_max_length=64)


@pytest.fixture()
def inputs(tmp_path):
    src = write_jsonl(tmp_path / "raw" / "a.jsonl", [{"text": t} for t in prose_docs(40)])
    # the split hashes the file path (tmp_path): at 5% a 40-document val split is empty ~13% of
    # the time, at 25% about once in 10^5
    params = make_params(
        [jsonl_source(src, name="a")],
        packing={"max_seq_len": 64, "preprocess_validation_fraction": 0.25},
        dedup={"exact": True, "near_dup": False},
        stage_mixes={"only_a": {"a": 1.0}},
    )
    return build_ledger(params), params


class Project:
    """The catalog entries of data_processing's published outputs under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tokenizer = HFTokenizerDataset(str(root / "tokenizer"))
        self.train = ParquetShardsDataset(str(root / "packed" / "train"))
        self.val = ParquetShardsDataset(str(root / "packed" / "val"))
        self.mixes = PackedMixesDataset(str(root / "packed_mixes"))
        self.manifest = AtomicJSONDataset(str(root / "packing_manifest.json"))

    def publish(self, tok, ledger, params, while_packing=lambda: None) -> None:
        """What a data_processing run does, in the runner's order: save the tokenizer, load it
        back, pack (``while_packing`` runs meanwhile), save the pack node's outputs (manifest last)."""
        self.tokenizer.save(tok)
        loaded = self.tokenizer.load()
        while_packing()
        train, val, mixes, manifest, _ = pack(ledger, loaded, params)
        self.train.save(train)
        self.val.save(val)
        self.mixes.save(mixes)
        self.manifest.save(manifest)

    def generations(self) -> dict[str, str | None]:
        out = {name: read_marker(self.root / name) for name in OUTPUTS}
        for mix in self.mixes.load().names():
            for split in ("train", "val"):
                out[f"packed_mixes/{mix}/{split}"] = read_marker(self.root / "packed_mixes" / mix / split)
        out["packing_manifest.json"] = self.manifest.load()["generation"]
        return out

    def check(self, shards=None) -> None:
        """The training side's check on what is published now."""
        tok = self.tokenizer.load()
        shards = shards or {"train": self.train.load(), "val": self.val.load()}
        sources = {k: packed_source(s.path, 2, 0, shuffle=False) for k, s in shards.items()}
        check_tokenizer_matches("language", tok, shards, sources)


def _digest(directory: Path, pattern: str) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.glob(pattern))}


def test_every_output_carries_the_tokenizers_generation_outside_the_data_bytes(tmp_path, inputs, small_tokenizer):
    ledger, params = inputs
    project = Project(tmp_path / "pub")
    project.publish(small_tokenizer, ledger, params)
    first = project.generations()
    assert set(first.values()) == {project.tokenizer.load().xoron_generation} and None not in first.values()
    assert len(first) == len(OUTPUTS) + 2 + 1  # + only_a/{train,val} + manifest
    project.check()
    project.check(project.mixes.load()["only_a"])
    parts = _digest(project.root / "packed" / "train", "part-*.parquet")
    tok_json = (project.root / "tokenizer" / "tokenizer.json").read_bytes()
    # the same data published again: a new generation, byte-identical data and tokenizer files
    project.publish(small_tokenizer, ledger, params)
    second = project.generations()
    assert len(set(second.values())) == 1 and set(second.values()) != set(first.values())
    assert _digest(project.root / "packed" / "train", "part-*.parquet") == parts
    assert (project.root / "tokenizer" / "tokenizer.json").read_bytes() == tok_json
    assert not list(project.root.rglob(".*stage-*"))  # no staging leftovers


def test_the_published_path_exists_at_every_step_of_a_republish(tmp_path, monkeypatch):
    import pyarrow as pa

    ds = ParquetShardsDataset(str(tmp_path / "packed" / "train"))
    dst = tmp_path / "packed" / "train"
    ds.save(pa.table({"x": [1]}))
    seen: list[tuple[str, bool]] = []

    def spy(name, func):
        def wrapped(*args, **kwargs):
            result = func(*args, **kwargs)
            seen.append((name, (dst / "part-00000.parquet").is_file()))
            return result

        return wrapped

    for name in ("rename", "replace"):
        monkeypatch.setattr(atomic_mod.os, name, spy(name, getattr(os, name)))
    monkeypatch.setattr(atomic_mod.shutil, "rmtree", spy("rmtree", shutil.rmtree))
    monkeypatch.setattr(atomic_mod, "_exchange", spy("exchange", atomic_mod._exchange))
    for value in range(2, 5):
        ds.save(pa.table({"x": [value]}))
        assert ds.load().read().column("x").to_pylist() == [value]
    assert ("exchange", True) in seen and all(present for _, present in seen), seen


def test_without_an_exchange_the_fallback_still_publishes(tmp_path, monkeypatch, caplog):
    import pyarrow as pa

    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)
    ds = ParquetShardsDataset(str(tmp_path / "d"))
    ds.save(pa.table({"x": [1]}))
    with caplog.at_level("WARNING", logger=atomic_mod.__name__):
        ds.save(pa.table({"x": [2]}))
    assert ds.load().read().column("x").to_pylist() == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


class _BrokenTokenizer:
    def save_pretrained(self, path):
        Path(path, "tokenizer.json").write_text("{half")
        raise OSError("disk full")


def test_failed_saves_keep_the_previous_generation_and_leave_no_staging(tmp_path, inputs, small_tokenizer):
    import pyarrow as pa

    ledger, params = inputs
    project = Project(tmp_path / "pub")
    project.publish(small_tokenizer, ledger, params)
    before = project.generations()
    files_before = {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()}

    def batches():
        yield pa.table({"input_ids": [[1, 2]], "length": [2]})
        raise RuntimeError("packing failed half way")

    with pytest.raises(Exception, match="disk full"):
        project.tokenizer.save(_BrokenTokenizer())
    with pytest.raises(Exception, match="half way"):
        project.train.save(batches())
    staged = ShardSet(tmp_path / "gone", staged=True)  # a staged set that vanished: the move fails
    with pytest.raises(Exception, match="gone"):
        project.mixes.save({"only_a": {"train": staged, "val": staged}})
    with pytest.raises(Exception, match="different data generations"):
        project.mixes.save(
            {
                "only_a": {
                    "train": ShardSet(project.train.load().path, generation="x"),
                    "val": ShardSet(project.val.load().path, generation="y"),
                }
            }
        )
    with pytest.raises(Exception, match="not JSON serializable"):
        project.manifest.save({"generation": object()})
    assert project.generations() == before
    assert {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()} == files_before
    project.check()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_published_outputs_follow_the_umask(tmp_path, inputs, small_tokenizer, mask):
    ledger, params = inputs
    old = os.umask(mask)
    try:
        project = Project(tmp_path / "pub")
        project.publish(small_tokenizer, ledger, params)
    finally:
        os.umask(old)
    assert (project.root / "packing_manifest.json").stat().st_mode & 0o777 == 0o666 & ~mask
    for name in OUTPUTS:
        directory = project.root / name
        assert directory.stat().st_mode & 0o777 == 0o777 & ~mask, name
        for f in directory.rglob("*"):
            want = (0o777 if f.is_dir() else 0o666) & ~mask
            assert f.stat().st_mode & 0o777 == want, f


@pytest.mark.parametrize("locked", [True, False])
def test_overlapping_publishes(tmp_path, inputs, small_tokenizer, locked, caplog):
    """Run B starts while run A packs with the tokenizer it saved. Under the data
    lock B waits and everything ends in B's generation; without it, A's packed data lands beside
    B's tokenizer, and the training check refuses them naming both."""
    ledger, params = inputs
    project = Project(tmp_path / "pub")
    lock_path = tmp_path / "data" / ".data_processing.lock"
    a_has_tokenizer, b_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def guarded(what):
        return ProjectLock(lock_path, "exclusive", 30, what) if locked else _NoLock()

    def run_a():
        def pause():
            a_has_tokenizer.set()
            if locked:
                time.sleep(0.5)  # B is now blocked on the lock
            else:
                b_done.wait(30)

        try:
            with guarded("A"):
                project.publish(small_tokenizer, ledger, params, while_packing=pause)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def run_b():
        a_has_tokenizer.wait(30)
        try:
            with guarded("B"):
                project.publish(small_tokenizer, ledger, params)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        b_done.set()

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    with caplog.at_level("WARNING", logger="xoron_pipelines.project_lock"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    generations = project.generations()
    if locked:
        assert "B: waiting up to 30 s for the data lock" in caplog.text and "(exclusive, A," in caplog.text
        assert len(set(generations.values())) == 1
        project.check()
    else:
        assert generations["tokenizer"] != generations["packed/train"]
        with pytest.raises(ValueError) as info:
            project.check()
        message = str(info.value)
        for part in (
            str(project.root / "tokenizer"),
            str(project.root / "packed" / "train"),
            generations["tokenizer"],
            generations["packed/train"],
        ):
            assert part in message


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_the_marker_is_invisible_to_parquet_readers(tmp_path):
    import pyarrow as pa

    ds = ParquetShardsDataset(str(tmp_path / "d"))
    ds.save(ShardSet(_staged(tmp_path, pa.table({"x": [1, 2]})), staged=True, generation="g1"))
    assert (tmp_path / "d" / MARKER).is_file() and ds.load().generation == "g1"
    assert ds.load().read().num_rows == 2 and [f.name for f in ds.load().files] == ["part-00000.parquet"]
    import pyarrow.dataset as pads

    assert pads.dataset(str(tmp_path / "d"), format="parquet").to_table().num_rows == 2  # readers skip "_" files


def _staged(tmp_path: Path, table) -> Path:
    import pyarrow.parquet as pq

    from xoron_pipelines.datasets.parquet_shards import staging_dir

    path = staging_dir()
    pq.write_table(table, path / "part-00000.parquet")
    return path


@pytest.mark.parametrize("move", [True, False])
def test_a_mkdtemp_directory_is_published_with_the_umask_not_0700(tmp_path, move):
    import tempfile

    from xoron_pipelines.atomic import current_umask as umask
    from xoron_pipelines.datasets.parquet_shards import replace_dir

    src = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700, as model / latent datasets stage
    (src / "weights.safetensors").write_bytes(b"x")
    replace_dir(src, tmp_path / "out", move=move)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask() != 0o700
    assert (tmp_path / "out" / "weights.safetensors").read_bytes() == b"x" and src.exists() != move
