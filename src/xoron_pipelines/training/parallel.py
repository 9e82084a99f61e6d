"""How one training process cooperates with its data-parallel peers inside :func:`~.engine.train`.

The engine talks to a *parallel context* for everything that differs between one process and a
group of processes: wrapping the model, switching gradient synchronisation off during
accumulation micro-steps, summing numbers over ranks, collecting the full (unsharded) state for
a checkpoint and loading it back. :class:`SingleProcess` is the trivial context (the default: the
engine behaves exactly as without one); :class:`DataParallel` is the context of one rank of an
initialised ``torch.distributed`` process group:

* ``strategy="ddp"``: ``DistributedDataParallel`` with ``forward_sync_buffers=False``: buffers are
  copied from rank 0 once, at construction, not before every forward. Buffers that ranks must agree
  on, such as the MoE load-balancing bias, are all-reduced by the model itself in
  ``update_moe_bias``, and rank-local counters (tokens per expert) must not be overwritten by rank 0's;
* ``strategy="fsdp2"``: ``torch.distributed.fsdp.fully_shard`` on every block of the model's
  outermost ``nn.ModuleList`` containers (the transformer layers), then on the root, with an
  optional ``MixedPrecisionPolicy`` (:func:`fsdp_mixed_precision`: bf16 parameters in forward and
  backward, gradients reduced in fp32, the sharded master weights and optimizer state fp32).
  Checkpoints hold the full state dict (gathered to rank 0 on CPU) in the layout of a plain
  ``optimizer.state_dict()`` (parameter ids, not names), so a checkpoint written by FSDP2 ranks
  resumes in a single process and the other way round, on any device. fp16 (dynamic loss scaling)
  is not supported with FSDP2: use bf16. FSDP2 finds the
  backward through the tensors of the forward's output, so the model must return a tensor or a pytree
  of tensors (the Xoron model's transformers ``ModelOutput`` is one); a run whose first step leaves
  every parameter without a (non-zero) gradient stops with an error saying so.

Launching the processes is :mod:`xoron_pipelines.training.distributed`'s job.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

Strategy = Literal["ddp", "fsdp2"]


class SingleProcess:
    """The parallel context of a run with one process: every operation is the identity."""

    rank = 0
    world_size = 1
    is_writer = True

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def gradient_sync(self, forward_model: nn.Module, enabled: bool) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        return list(values)

    def all_reduce_mean(self, values: list[float]) -> list[float]:
        return list(values)

    def broadcast(self, obj: Any) -> Any:
        return obj

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        return None

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """``(model state, optimizer state)`` to checkpoint (complete on the writer)."""
        return model.state_dict(), optimizer.state_dict()

    def load_full_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict
    ) -> None:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)


def fsdp_mixed_precision(precision: str, device: torch.device) -> Any:
    """FSDP2's ``MixedPrecisionPolicy`` for a stage's ``precision``: bf16 parameters for the forward and
    backward with gradients reduced in fp32 when the precision is ``bf16``, or ``auto`` on a CUDA
    device with bf16 support; None (full fp32) otherwise."""
    device = torch.device(device)
    bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )
    if not bf16:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


class DataParallel(SingleProcess):
    """One rank of a data-parallel group (the process group must already be initialised).
    ``mixed_precision``: FSDP2's ``MixedPrecisionPolicy`` (:func:`fsdp_mixed_precision`), fsdp2 only."""

    def __init__(
        self,
        strategy: Strategy,
        device: torch.device,
        find_unused_parameters: bool = False,
        mixed_precision: Any = None,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised torch.distributed process group")
        if strategy not in ("ddp", "fsdp2"):
            raise ValueError(f"unknown data-parallel strategy {strategy!r}; expected 'ddp' or 'fsdp2'")
        if mixed_precision is not None and strategy != "fsdp2":
            raise ValueError("a mixed-precision policy applies to strategy fsdp2 only")
        self.strategy = strategy
        self.mixed_precision = mixed_precision
        self.device = torch.device(device)
        self.find_unused_parameters = find_unused_parameters
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_writer = self.rank == 0
        self._checked = strategy != "fsdp2"
        self._sharded: list[torch.Tensor] = []

    # ---- model -------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls forward on (DDP wrapper, or the model sharded in place)."""
        if self.strategy == "ddp":
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(
                model,
                device_ids=device_ids,
                forward_sync_buffers=False,
                find_unused_parameters=self.find_unused_parameters,
            )
        from torch.distributed.fsdp import fully_shard

        shard = functools.partial(fully_shard, mp_policy=self.mixed_precision) if self.mixed_precision else fully_shard
        _shard_blocks(model, shard)  # one unit per decoder layer, then the root (embeddings, norm, head)
        shard(model)
        self._sharded = [p for p in model.parameters() if p.requires_grad]  # what the optimizer updates
        return model

    def gradient_sync(self, forward_model: nn.Module, enabled: bool) -> AbstractContextManager[None]:
        """Context for one micro-step's forward and backward: gradients are reduced over ranks only
        when ``enabled`` (the last micro-batch of an accumulation window)."""
        if self.strategy == "ddp":
            return contextlib.nullcontext() if enabled else forward_model.no_sync()
        forward_model.set_requires_gradient_sync(enabled)
        return self._check_fsdp_gradients() if enabled and not self._checked else contextlib.nullcontext()

    @contextlib.contextmanager
    def _check_fsdp_gradients(self) -> Iterator[None]:
        """After the first synchronised backward: FSDP2 hooks the backward on the tensors of the
        forward's output, so an output it cannot traverse leaves every parameter without (a non-zero) gradient."""
        yield
        self._checked = True
        local = [p.grad.to_local() for p in self._sharded if p.grad is not None]
        if self.all_reduce_sum([float(sum(bool(g.count_nonzero()) for g in local))])[0] == 0:
            raise RuntimeError(
                "FSDP2: no sharded parameter received a gradient. fully_shard finds the "
                "backward through the forward's output, which must be a tensor or a pytree of tensors "
                "(tuple, namedtuple, list, dict, transformers ModelOutput); use strategy ddp otherwise"
            )

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """A collective with FSDP2 (every rank must call it); the full state lands on rank 0."""
        if self.strategy == "ddp":
            return model.state_dict(), optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        # the model's state first: it reshards a root left unsharded by an evaluation forward, so the
        # parameters are again the sharded ones the optimizer holds
        model_state = get_model_state_dict(model, options=options)
        return model_state, _names_to_ids(get_optimizer_state_dict(model, optimizer, options=options))

    def load_full_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict
    ) -> None:
        if self.strategy == "ddp":
            super().load_full_state(model, optimizer, model_state, optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, optimizer, _ids_to_names(optimizer_state, model, optimizer), options=options)

    # ---- collectives -------------------------------------------------------------------
    def all_reduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_reduce_mean(self, values: list[float]) -> list[float]:
        return [v / self.world_size for v in self.all_reduce_sum(values)]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()


def _names_to_ids(state: dict) -> dict:
    """torch.distributed.checkpoint's optimizer state (keyed by parameter name) in the layout of a plain
    ``optimizer.state_dict()``: parameters numbered 0, 1, ... in the order of the param groups
    (the empty state that ranks other than 0 receive stays empty)."""
    if not state:
        return state
    ids: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        numbered = [ids.setdefault(name, len(ids)) for name in group["params"]]
        groups.append({**group, "params": numbered})
    return {"state": {ids[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def _ids_to_names(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The inverse of :func:`_names_to_ids` for ``optimizer`` over ``model``'s parameters: the plain
    layout's ids, numbered in the order of ``optimizer``'s param groups, become parameter names."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    if len(order) != sum(len(g["params"]) for g in state["param_groups"]):
        raise ValueError(
            f"the checkpoint's optimizer state holds {sum(len(g['params']) for g in state['param_groups'])} "
            f"parameters, the optimizer {len(order)}"
        )
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {order[i]: value for i, value in state["state"].items()}, "param_groups": groups}


def _shard_blocks(module: nn.Module, fully_shard) -> None:
    """``fully_shard`` each entry of the outermost ``nn.ModuleList`` containers below ``module``."""
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                fully_shard(block)
        else:
            _shard_blocks(child, fully_shard)
