"""Scale-out: the training node launches its own data-parallel workers (no ``torchrun kedro run``).

:func:`distributed_train` is what a Kedro training node calls. With one process in total
(``nproc_per_node == nnodes == 1``) it simply builds the model and calls
:func:`~xoron_pipelines.training.engine.train` in the node's own process. Otherwise
:func:`launch` starts ``nproc_per_node`` worker processes on this node with torch.distributed's
elastic launcher (``elastic_launch``; rendezvous ``rdzv_backend`` at ``rdzv_endpoint`` with
``nnodes`` nodes, ``max_restarts`` restarts, spawn start method). Each worker

1. initialises the process group (``backend``: gloo on CPU, nccl on GPU; ``auto`` picks nccl when
   the ranks are on GPUs) and, on GPU, uses ``cuda:<LOCAL_RANK>`` (one GPU per rank);
2. seeds with ``cfg.seed`` and calls ``model_factory()`` (identical weights on every rank);
3. trains with :class:`~xoron_pipelines.training.parallel.DataParallel` (DDP or FSDP2) on its
   :class:`~xoron_pipelines.training.data.ShardedBatchSource` share of each global micro-batch.

Rank 0 alone writes checkpoints; its :class:`~.engine.TrainResult` travels back to the node (a
small picklable object: counters, metric history, paths). The weights come back through the
final checkpoint: the node builds ``model_factory()`` once more and loads
``result.last_checkpoint/model.safetensors`` into it (no tensors are pickled across processes),
then replays rank 0's metric history through ``on_log`` in the node's process, so callbacks such
as MLflow logging run where the Kedro run lives. A worker's exception fails the launch with a
``ChildFailedError`` that carries the worker's traceback. With ``max_restarts > 0`` a restarted
group resumes from the newest checkpoint in ``ckpt_dir``.

What crosses the process boundary must be picklable: ``model_factory``, ``batches`` (a
:class:`~.data.BatchSource` or a zero-argument factory of one, called in every worker),
``eval_fn``, ``loss_fn``, ``param_groups`` (a function of the model) and ``stats_fn`` are
module-level functions, ``functools.partial`` of them, or instances of module-level classes.

Batch sizes: the source's batch size is the *global* micro-batch (split evenly over all
processes), so W processes with accumulation A and source batch B step on exactly the data of one
process with accumulation W*A and source batch B/W (or accumulation A and batch B); the engine's
token-weighted loss normalisation is global, so the gradients agree up to float reduction order.
Multi-node runs need ``ckpt_dir`` on storage every node can read; the node with
``node_rank`` 0 hosts rank 0 and returns the outputs, the others return None.

Where the ranks run (:func:`rank_device_type`): the stage's ``device`` (``auto | cpu | cuda``)
decides. On GPUs every rank takes ``cuda:<LOCAL_RANK>``, so ``nproc_per_node`` may not exceed the
visible GPUs (an error naming the key, raised before anything is launched); ``nproc_per_node:
auto`` is the number of visible GPUs (1 on a machine without any). CPU ranks (``device: cpu``, or
``auto`` without a GPU) are gloo processes sharing the cores. With ``strategy: fsdp2`` and bf16
(``precision: bf16``, or ``auto`` on a GPU with bf16) the parameters are all-gathered in bf16 and
gradients reduced in fp32 (:func:`~.parallel.fsdp_mixed_precision`).

``device_map`` (seed 000's ``use_model_parallel``) is the other way to use several GPUs: one process
whose model is split over them (:mod:`xoron_pipelines.model.placement`); it needs one process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field, field_validator, model_validator
from safetensors.torch import load_file
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from xoron_pipelines.device import resolve_device
from xoron_pipelines.training.checkpoint import MODEL_FILE
from xoron_pipelines.training.config import TrainConfig
from xoron_pipelines.training.data import BatchSource, ShardedBatchSource
from xoron_pipelines.training.engine import EvalFn, LogFn, LossFn, ParamGroups, StatsFn, TrainResult, train
from xoron_pipelines.training.float8 import check_float8
from xoron_pipelines.training.parallel import DataParallel, fsdp_mixed_precision
from xoron_pipelines.training.reproducibility import seed_everything
from xoron_pipelines.validation import StrictModel

log = logging.getLogger(__name__)

ModelFactory = Callable[[], nn.Module]
Batches = BatchSource | Callable[[], BatchSource]


class RendezvousPortInUseError(RuntimeError):
    """The rendezvous port this node should host is already taken by another process."""


class DistributedSettings(StrictModel):
    """How many training processes to run and how they find each other (torchrun's options), and
    how a single process splits its model over several GPUs (``device_map``)."""

    nproc_per_node: int | Literal["auto"] = Field(
        1,
        description="worker processes on this node (1 with nnodes 1: no launch); auto = the number of visible "
        "GPUs (torch.cuda.device_count()), 1 without a GPU",
    )
    nnodes: int = Field(1, ge=1, description="number of nodes")
    node_rank: int = Field(0, ge=0, description="this node's rank (used by the static rendezvous)")
    rdzv_backend: Literal["c10d", "static"] = "c10d"
    rdzv_endpoint: str = Field("127.0.0.1:29500", description="host:port of the rendezvous store (node 0)")
    rdzv_id: str = Field("xoron-train", min_length=1, description="job id shared by all nodes")
    strategy: Literal["ddp", "fsdp2"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl with CUDA, else gloo")
    find_unused_parameters: bool = Field(False, description="DDP: allow parameters without gradient in a step")
    max_restarts: int = Field(0, ge=0, description="restarts of the worker group (it resumes from checkpoints)")
    timeout: int = Field(900, gt=0, description="seconds for the rendezvous and for each collective")
    device_map: None | Literal["auto"] | dict[str, str] = Field(
        None,
        description="model parallelism in one process (seed 000's use_model_parallel: true = auto): auto = the "
        "model's parts (embeddings, layer ranges, final norm + head) balanced by parameter count over the "
        "visible GPUs (nothing to do on CPU), or an explicit {part: device} map, e.g. {embed: cuda:0, "
        "layers.0-11: cuda:0, layers.12-23: cuda:1, head: cuda:1}; null = the whole model on the stage's device",
    )

    @model_validator(mode="before")
    @classmethod
    def _seed_model_parallel(cls, data: Any) -> Any:
        """Seed 000's ``use_model_parallel: true/false`` = ``device_map: auto`` / ``null``."""
        if not isinstance(data, dict) or "use_model_parallel" not in data:
            return data
        data = dict(data)
        flag = data.pop("use_model_parallel")
        if not isinstance(flag, bool):
            raise ValueError(f"use_model_parallel must be true or false, got {flag!r}")
        wanted = "auto" if flag else None
        if data.get("device_map", wanted) != wanted:
            raise ValueError(f"device_map={data['device_map']!r} contradicts use_model_parallel: {str(flag).lower()}")
        data["device_map"] = wanted
        return data

    @field_validator("nproc_per_node")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"must be auto or at least 1, got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> DistributedSettings:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be < nnodes {self.nnodes}")
        self.endpoint()  # host:port must parse
        if self.device_map is not None and self.launches:
            raise ValueError(
                f"device_map splits the model of one process over GPUs; it needs nproc_per_node x nnodes = 1, "
                f"got {self.world_size} processes (use strategy fsdp2 to shard over processes instead)"
            )
        return self

    @property
    def nproc(self) -> int:
        """``nproc_per_node`` resolved: ``auto`` = the visible CUDA devices, 1 without any."""
        if self.nproc_per_node == "auto":
            return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
        return self.nproc_per_node

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def launches(self) -> bool:
        """True when workers are spawned (more than one process in total)."""
        return self.world_size > 1

    def endpoint(self) -> tuple[str, int]:
        host, sep, port = self.rdzv_endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"rdzv_endpoint must be host:port with a port in 1..65535, got {self.rdzv_endpoint!r}")
        return host.strip("[]"), int(port)

    def resolved_backend(self, device: str | None = "auto") -> str:
        """The process-group backend for ranks on the stage's ``device``: ``auto`` is nccl when the
        ranks are on GPUs (:func:`rank_device_type`), else gloo."""
        on_gpu = rank_device_type(device) == "cuda"
        if self.backend == "auto":
            return "nccl" if on_gpu else "gloo"
        if self.backend == "nccl" and not on_gpu:
            if not torch.cuda.is_available():
                raise ValueError(
                    "distributed.backend 'nccl' needs CUDA GPUs, none is available; use 'gloo' (or 'auto') on CPU"
                )
            raise ValueError("distributed.backend 'nccl' needs ranks on GPUs, but the stage's device is cpu; use gloo")
        return self.backend


def rank_device_type(device: str | None = "auto", key: str = "device") -> str:
    """``"cuda"`` when the ranks of a stage on ``device`` (``auto | cpu | cuda | cuda:N``) run on GPUs,
    else ``"cpu"`` (the one device resolver decides; an explicit ``cuda`` without a GPU is its error)."""
    return resolve_device(device, key).type


def check_compatible(
    cfg: TrainConfig, settings: DistributedSettings, device: str | None = "auto", key: str = "distributed"
) -> str:
    """Refuse combinations that cannot work, before any process is started; returns the type of the
    ranks' device (``cuda`` or ``cpu``). ``key`` names the settings in errors (e.g.
    ``pretrain.stages.language.distributed``)."""
    kind = rank_device_type(device)
    if cfg.float8:
        check_float8(resolve_device(device), key="train.float8")
    if settings.nproc_per_node == "auto":
        if kind == "cuda":
            log.info("%s.nproc_per_node auto: %d visible GPU(s), one process per GPU", key, settings.nproc)
        else:
            log.info("%s.nproc_per_node auto: no CUDA GPU visible, 1 process on the CPU", key)
    if not settings.launches:
        return kind
    if settings.strategy == "fsdp2" and cfg.precision == "fp16":
        raise ValueError("precision fp16 (dynamic loss scaling) is not supported with strategy fsdp2; use bf16")
    if kind == "cuda":
        visible = torch.cuda.device_count()
        if settings.nproc > visible:
            raise ValueError(
                f"{key}.nproc_per_node is {settings.nproc_per_node}: one GPU per process, but only {visible} GPU(s) "
                "are visible; use nproc_per_node: auto (one process per visible GPU), or device: cpu for CPU processes"
            )
        if device not in (None, "auto", "cuda"):
            raise ValueError(
                f"device {device!r} names one GPU, but the {settings.world_size} processes of {key} each take "
                "cuda:<LOCAL_RANK>; use device auto or cuda"
            )
    settings.resolved_backend(device)
    return kind


def check_port_free(settings: DistributedSettings) -> None:
    """On the node that hosts the rendezvous, fail clearly when its port is taken (instead of the
    launcher silently connecting to whatever listens there and timing out)."""
    host, port = settings.endpoint()
    if settings.node_rank != 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"rdzv_endpoint {settings.rdzv_endpoint!r}: cannot resolve {host!r} ({exc})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RendezvousPortInUseError(
                    f"rdzv_endpoint {settings.rdzv_endpoint}: port {port} is already in use on this machine; "
                    "set distributed.rdzv_endpoint to a free port"
                ) from None
            if exc.errno != errno.EADDRNOTAVAIL:  # EADDRNOTAVAIL: the host is another machine
                raise


@record
def _recorded(fn: Callable[..., Any], *args: Any) -> Any:
    """Worker entry point: runs ``fn``; ``@record`` puts an exception's traceback in the launch error."""
    return fn(*args)


def launch(fn: Callable[..., Any], settings: DistributedSettings, *args: Any) -> Any:
    """Run ``fn(*args)`` in ``settings.nproc_per_node`` processes on this node (joining ``nnodes`` nodes)
    and return the global rank 0's return value (None on nodes without rank 0). With a single
    process in total, ``fn(*args)`` runs in the calling process. ``fn`` and ``args`` must be picklable.
    """
    if not settings.launches:
        return fn(*args)
    check_port_free(settings)
    rdzv_configs: dict[str, Any] = {"timeout": settings.timeout}
    if settings.rdzv_backend == "static":
        rdzv_configs["rank"] = settings.node_rank
    config = LaunchConfig(
        min_nodes=settings.nnodes,
        max_nodes=settings.nnodes,
        nproc_per_node=settings.nproc,
        run_id=settings.rdzv_id,
        role="xoron-train",
        rdzv_endpoint=settings.rdzv_endpoint,
        rdzv_backend=settings.rdzv_backend,
        rdzv_configs=rdzv_configs,
        max_restarts=settings.max_restarts,
        start_method="spawn",
    )
    log.info(
        "launching %d worker(s) on node %d of %d (%s, rendezvous %s at %s)",
        settings.nproc,
        settings.node_rank,
        settings.nnodes,
        settings.strategy,
        settings.rdzv_backend,
        settings.rdzv_endpoint,
    )
    with _signal_handlers_kept():
        results = elastic_launch(config, _recorded)(fn, *args)
    return results.get(0)


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Restore the caller's handlers of the signals the elastic agent takes over (in the main thread it
    installs handlers that turn SIGINT / SIGTERM into its own exception), so Ctrl-C in the Kedro process
    behaves as before once the launch is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
    saved = {sig: signal.getsignal(sig) for sig in (getattr(signal, n) for n in names if hasattr(signal, n))}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def _batch_source(batches: Batches) -> BatchSource:
    return batches if isinstance(batches, BatchSource) else batches()


def _build_model(model_factory: ModelFactory, cfg: TrainConfig) -> nn.Module:
    seed_everything(cfg.seed)  # the same initial weights in every process
    return model_factory()


def _worker(
    model_factory: ModelFactory,
    batches: Batches,
    cfg: TrainConfig,
    settings: DistributedSettings,
    ckpt_dir: str,
    eval_fn: EvalFn | None,
    loss_fn: LossFn | None,
    resume: bool,
    desc: str,
    progress: bool,
    param_groups: ParamGroups | None = None,
    stats_fn: StatsFn | None = None,
    device_spec: str | None = "auto",
) -> TrainResult | None:
    """One rank: process group, model, shard of the data, :func:`train`; rank 0 returns the result."""
    backend = settings.resolved_backend(device_spec)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = rank_device(rank_device_type(device_spec), local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:  # share the node's cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.nproc))
    dist.init_process_group(backend, timeout=timedelta(seconds=settings.timeout))
    try:
        parallel = DataParallel(
            settings.strategy,
            device,
            settings.find_unused_parameters,
            mixed_precision=fsdp_mixed_precision(cfg.precision, device) if settings.strategy == "fsdp2" else None,
        )
        model = _build_model(model_factory, cfg).to(device)
        source = ShardedBatchSource(_batch_source(batches), parallel.rank, parallel.world_size)
        result = train(
            model,
            source,
            cfg,
            ckpt_dir=ckpt_dir,
            eval_fn=eval_fn,
            loss_fn=loss_fn,
            resume=resume,
            desc=desc,
            progress=progress,
            parallel=parallel,
            param_groups=param_groups,
            stats_fn=stats_fn,
        )
        return result if parallel.rank == 0 else None
    finally:
        dist.destroy_process_group()


def rank_device(kind: str, local_rank: int) -> torch.device:
    """The device of the rank with ``local_rank`` on this node: ``cuda:<LOCAL_RANK>`` (one GPU per
    rank) when the ranks are on GPUs, else the CPU."""
    return torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")


def distributed_train(
    model_factory: ModelFactory,
    batches: Batches,
    cfg: TrainConfig,
    settings: DistributedSettings,
    *,
    ckpt_dir: str | os.PathLike,
    eval_fn: EvalFn | None = None,
    on_log: LogFn | None = None,
    loss_fn: LossFn | None = None,
    resume: bool = True,
    desc: str = "train",
    progress: bool = True,
    param_groups: ParamGroups | None = None,
    stats_fn: StatsFn | None = None,
    device: str | None = "auto",
) -> tuple[nn.Module, TrainResult] | None:
    """Train ``model_factory()`` on ``batches`` in ``settings.world_size`` processes.

    Returns ``(trained model, rank 0's TrainResult)`` in the calling process (None on a node other
    than node 0). The arguments are those of :func:`~.engine.train`; see the module docstring for
    what must be picklable and how batch sizes map. ``device`` is the stage's device parameter
    (``auto | cpu | cuda``): it decides whether the ranks run on GPUs (one each) or CPU.
    """
    check_compatible(cfg, settings, device)
    if not settings.launches:
        model = _build_model(model_factory, cfg)
        return model, train(
            model,
            _batch_source(batches),
            cfg,
            ckpt_dir=ckpt_dir,
            eval_fn=eval_fn,
            on_log=on_log,
            loss_fn=loss_fn,
            resume=resume,
            desc=desc,
            progress=progress,
            param_groups=param_groups,
            stats_fn=stats_fn,
        )
    result = launch(
        _worker,
        settings,
        model_factory,
        batches,
        cfg,
        settings,
        str(ckpt_dir),
        eval_fn,
        loss_fn,
        resume,
        desc,
        progress,
        param_groups,
        stats_fn,
        device,
    )
    if result is None:
        return None
    model = _build_model(model_factory, cfg)
    model.load_state_dict(load_file(str(Path(result.last_checkpoint) / MODEL_FILE)))
    if on_log is not None:
        for entry in result.history:
            on_log(int(entry["step"]), {k: v for k, v in entry.items() if k != "step"})
    return model, result


__all__ = [
    "DistributedSettings",
    "RendezvousPortInUseError",
    "check_compatible",
    "check_port_free",
    "distributed_train",
    "launch",
    "rank_device",
    "rank_device_type",
]
