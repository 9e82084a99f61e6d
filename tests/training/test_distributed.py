"""Scale-out: 2 CPU processes (gloo, elastic launch) match 1 process with doubled accumulation.

The 2-process runs use a global micro-batch of 4 rows (2 per rank) and accumulation 2; the
reference runs in-process with micro-batches of 2 rows and accumulation 4, i.e. the very same rows
per optimizer step. Rows have unequal lengths, so the token-weighted loss is only right when the
target weight is summed over ranks. The model's load-balancing buffer is all-reduced in
``update_moe_bias`` (as the Xoron MoE does), clipping and an eval are on.
"""

from __future__ import annotations

import collections
import functools
import os
import signal
import socket
from pathlib import Path
from unittest import mock

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from tests.training.tiny_lm import TinyLM
from xoron_pipelines.training import TensorBatchSource, TrainConfig, checkpoint, distributed, train
from xoron_pipelines.training.data import ShardedBatchSource
from xoron_pipelines.training.distributed import DistributedSettings, RendezvousPortInUseError, distributed_train
from xoron_pipelines.training.parallel import DataParallel

ROWS = torch.randint(0, 31, (32, 8), generator=torch.Generator().manual_seed(0))
LENGTHS = torch.tensor([8, 3, 8, 5, 8, 8, 2, 8, 6, 8, 8, 4, 8, 8, 7, 8] * 2)
CFG = dict(
    max_steps=6,
    learning_rate=1e-2,
    warmup_steps=1,
    max_grad_norm=0.5,
    save_steps=2,
    keep_last_k=2,
    logging_steps=1,
    eval_steps=3,
    seed=3,
)
TOLERANCE = 1e-6
LMOutput = collections.namedtuple("LMOutput", "loss logits")


class SyncedTinyLM(TinyLM):
    """TinyLM whose load-balancing update sums the token counts over ranks first (like Xoron's MoE),
    returning a named tuple (a pytree FSDP2 can hook, like the Xoron model's ``ModelOutput``)."""

    def forward(self, input_ids, labels=None, loss_weights=None):
        out = super().forward(input_ids, labels=labels, loss_weights=loss_weights)
        return LMOutput(out.loss, out.logits)

    def update_moe_bias(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.load)
        super().update_moe_bias()


def make_model() -> SyncedTinyLM:
    return SyncedTinyLM(dropout=0.0)


def make_source(batch_size: int, spy_dir: str | None = None) -> TensorBatchSource:
    """The batch source; with ``spy_dir``, every checkpoint write of this process leaves a marker file."""
    if spy_dir is not None:
        write = checkpoint.write_checkpoint

        def spying_write(root, snap):
            Path(spy_dir, f"rank{os.environ['RANK']}-step{snap.step}").touch()
            return write(root, snap)

        checkpoint.write_checkpoint = spying_write
    return TensorBatchSource(ROWS, batch_size=batch_size, seed=1, lengths=LENGTHS)


def held_out_loss(model) -> float:
    return float(model(input_ids=ROWS[:4], labels=ROWS[:4]).loss)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(root: Path, name: str, batch_size: int, accumulation: int, **settings) -> dict:
    logs: list[tuple[int, dict]] = []
    spy = root / f"{name}-writes"
    spy.mkdir()
    cfg = TrainConfig(**CFG, batch_size=batch_size, gradient_accumulation_steps=accumulation)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    model, result = distributed_train(
        make_model,
        functools.partial(make_source, batch_size, str(spy) if settings else None),
        cfg,
        DistributedSettings(**settings),
        ckpt_dir=root / name,
        eval_fn=held_out_loss,
        on_log=lambda step, metrics: logs.append((step, metrics)),
        progress=False,
    )
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # Ctrl-C works as before
    return {
        "model": model,
        "result": result,
        "logs": logs,
        "writes": sorted(p.name for p in spy.iterdir()),
        "ckpts": sorted(p.name for p in (root / name).iterdir()),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    with mock.patch.object(distributed, "elastic_launch", side_effect=AssertionError("must not launch")):
        out = {"single": _run(root, "single", 2, 4)}  # nproc_per_node=1: trains in this process
    for strategy in ("ddp", "fsdp2"):
        out[strategy] = _run(
            root,
            strategy,
            4,
            2,
            nproc_per_node=2,
            strategy=strategy,
            backend="gloo",
            rdzv_endpoint=f"127.0.0.1:{free_port()}",
        )
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one_with_doubled_accumulation(runs, strategy):
    single, multi = runs["single"], runs[strategy]
    assert multi["result"].state.step == single["result"].state.step == 6
    assert multi["result"].state.tokens_seen == single["result"].state.tokens_seen == 6 * 8 * 8
    reference, trained = single["model"].state_dict(), multi["model"].state_dict()
    assert reference.keys() == trained.keys()
    start = make_model()  # the weights really moved, far more than the tolerance
    assert max(float((reference[k] - start.state_dict()[k]).abs().max()) for k in reference) > 1e-2
    diff = max(float((reference[k] - trained[k]).abs().max()) for k in reference)
    print(f"{strategy}: max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_metrics_are_logged_once_with_global_values(runs, strategy):
    single, multi = runs["single"]["logs"], runs[strategy]["logs"]
    assert [(s, sorted(m)) for s, m in multi] == [(s, sorted(m)) for s, m in single]
    assert [s for s, m in multi if "loss" in m] == [1, 2, 3, 4, 5, 6]  # one entry per step: rank 0 only
    for (_, m1), (_, m2) in zip(single, multi):
        for key in ("loss", "grad_norm", "eval_loss", "lr", "tokens_seen", "epoch"):
            if key in m1:
                assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_only_rank_zero_writes_checkpoints(runs, strategy):
    multi = runs[strategy]
    assert multi["writes"] == ["rank0-step2", "rank0-step4", "rank0-step6"]
    assert multi["ckpts"] == runs["single"]["ckpts"] == ["checkpoint-4", "checkpoint-6"]
    assert multi["result"].last_checkpoint == multi["result"].last_checkpoint.parent / "checkpoint-6"


def test_sharded_source_splits_each_global_batch():
    source = TensorBatchSource(ROWS, batch_size=4, seed=1, lengths=LENGTHS)
    shards = [ShardedBatchSource(source, rank, 2) for rank in range(2)]
    for index in range(len(source)):
        full = source.batch(1, index)
        parts = [s.batch(1, index) for s in shards]
        for key in full:
            assert torch.equal(torch.cat([p[key] for p in parts]), full[key])
    with pytest.raises(ValueError, match="cannot be split evenly over 3"):
        ShardedBatchSource(source, 0, 3).batch(0, 0)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = DistributedSettings(
            nproc_per_node=2, backend="gloo", rdzv_endpoint=f"127.0.0.1:{busy.getsockname()[1]}"
        )
        with pytest.raises(RendezvousPortInUseError, match="already in use"):
            distributed_train(
                make_model, functools.partial(make_source, 4), TrainConfig(**CFG), settings, ckpt_dir=tmp_path
            )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "bad",
    [
        dict(nproc_per_node=0),
        dict(nnodes=2, node_rank=2),
        dict(rdzv_endpoint="host"),
        dict(rdzv_endpoint="127.0.0.1:70000"),
        dict(strategy="zero3"),
        dict(backend="mpi"),
        dict(surprise=1),
    ],
)
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValidationError):
        DistributedSettings(**bad)


def test_impossible_combinations_fail_before_launch(tmp_path):
    fsdp_fp16 = DistributedSettings(nproc_per_node=2, strategy="fsdp2", backend="gloo")
    with pytest.raises(ValueError, match="fp16"):
        distributed_train(
            make_model,
            functools.partial(make_source, 4),
            TrainConfig(**CFG, precision="fp16"),
            fsdp_fp16,
            ckpt_dir=tmp_path,
        )
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="nccl"):
            distributed_train(
                make_model,
                functools.partial(make_source, 4),
                TrainConfig(**CFG),
                DistributedSettings(nproc_per_node=2, backend="nccl"),
                ckpt_dir=tmp_path,
            )


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of one rank in this process (torn down after the test)."""
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


class _Interrupt(Exception):
    pass


def _interrupt_at(step):
    def on_log(s, metrics):
        if s == step:
            raise _Interrupt

    return on_log


def _train_fsdp2(model, ckpt_dir, on_log=None):
    cfg = TrainConfig(**{**CFG, "eval_steps": None}, batch_size=4, gradient_accumulation_steps=2)
    return train(
        model,
        make_source(4),
        cfg,
        ckpt_dir=ckpt_dir,
        progress=False,
        on_log=on_log,
        parallel=DataParallel("fsdp2", torch.device("cpu")),
    )


def test_fsdp2_checkpoints_resume_to_the_same_weights(one_rank_group, tmp_path):
    """FSDP2's full state dict round-trips through a checkpoint: an interrupted run resumes exactly."""
    torch.manual_seed(3)
    straight = make_model()
    _train_fsdp2(straight, tmp_path / "a")
    torch.manual_seed(3)
    with pytest.raises(_Interrupt):
        _train_fsdp2(make_model(), tmp_path / "b", on_log=_interrupt_at(5))  # after checkpoint-4
    torch.manual_seed(3)
    resumed = make_model()
    result = _train_fsdp2(resumed, tmp_path / "b")
    assert result.resumed_from == tmp_path / "b" / "checkpoint-4"
    saved = load_file(str(tmp_path / "b" / "checkpoint-6" / "model.safetensors"))  # a full, plain state dict
    expected, got = _full_state(straight), _full_state(resumed)
    assert saved.keys() == expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]) and torch.equal(saved[key], expected[key]), key


def _full_state(model) -> dict[str, torch.Tensor]:
    """The model's state with FSDP2's sharded DTensors gathered."""
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
