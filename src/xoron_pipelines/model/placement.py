"""Model parallelism in one process: a device map (seed 000's ``use_model_parallel``).

A model that has parts to place (``placement_parts()``: the Xoron model's ``embed``,
``layers.<i>`` and ``head``, in forward order) can be split over several GPUs so that a model
too large for one fits on several. ``distributed.device_map`` of a training stage says how:

* ``auto``: the parts, in order, in contiguous runs balanced by parameter count over the visible
  GPUs (:func:`plan_device_map`, deterministic); without a GPU there is nothing to place
  (a log line says so) and the model stays on the stage's device;
* an explicit ``{part: device}`` map: a part name, or a layer range ``layers.<a>-<b>`` (inclusive),
  to ``cpu`` / ``cuda`` / ``cuda:N``; every part must be named exactly once, and a GPU that is not
  visible is an error naming the key (:func:`xoron_pipelines.device.resolve_device`).

With tied input / output embeddings the ``head`` goes where ``embed`` is (one weight, one device).
:func:`place_model` moves each part to its device and registers forward pre-hooks that move each
placed module's tensor inputs to that module's current device, so activations follow the layers
in forward and autograd carries the gradients back. The hooks read the device at call time, so the
model stays correct if it is later moved as a whole (e.g. to the CPU for saving).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xoron_pipelines.device import resolve_device

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^layers\.(\d+)-(\d+)$")


def plan_device_map(sizes: Sequence[tuple[str, int]], devices: Sequence[str]) -> dict[str, str]:
    """Assign each part (``(name, parameter count)``, in forward order) to one of ``devices`` in
    contiguous runs balanced by parameter count: part i goes to device
    ``floor(n * (params before i + half its own) / total)``, so each device gets about ``total / n``
    parameters and the order is kept. Deterministic; a pure function."""
    if not devices:
        raise ValueError("plan_device_map needs at least one device")
    total = sum(size for _, size in sizes)
    n = len(devices)
    plan: dict[str, str] = {}
    before = 0
    for name, size in sizes:
        index = min(n - 1, int(n * (before + size / 2) / total)) if total else 0
        plan[name] = devices[index]
        before += size
    return plan


def expand_device_map(spec: Mapping[str, str], parts: Sequence[str], key: str = "device_map") -> dict[str, str]:
    """An explicit map with layer ranges (``layers.0-11``) expanded to one entry per part; every
    part must be named exactly once (errors name ``key`` and the offending entry)."""
    out: dict[str, str] = {}
    for entry, device in spec.items():
        match = _RANGE.match(entry)
        names = [f"layers.{i}" for i in range(int(match[1]), int(match[2]) + 1)] if match else [entry]
        if match and int(match[1]) > int(match[2]):
            raise ValueError(f"{key}.{entry}: empty layer range (write layers.<first>-<last>)")
        for name in names:
            if name not in parts:
                raise ValueError(f"{key}.{entry}: the model has no part {name!r} (parts: {_summary(parts)})")
            if name in out:
                raise ValueError(f"{key}.{entry}: part {name} is placed twice")
            out[name] = device
    missing = [p for p in parts if p not in out]
    if missing:
        raise ValueError(f"{key}: no device for {', '.join(missing)} (every part must be placed: {_summary(parts)})")
    return out


def _summary(parts: Sequence[str]) -> str:
    layers = [p for p in parts if p.startswith("layers.")]
    others = [p for p in parts if not p.startswith("layers.")]
    return ", ".join(others[:1] + ([f"layers.0-{len(layers) - 1}"] if layers else []) + others[1:])


def _parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft (LoRA) model
    parts = getattr(base, "placement_parts", None)
    if not callable(parts):
        raise ValueError(f"device_map: {type(base).__name__} has no parts to place (no placement_parts())")
    return parts()


def _tied(model: nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out, inp = base.get_output_embeddings(), base.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def resolve_device_map(
    spec: str | Mapping[str, str] | None, model: nn.Module, key: str = "device_map"
) -> dict[str, torch.device] | None:
    """The placement of ``model``'s parts for a ``device_map`` knob: None when there is nothing to
    place (``spec`` None, or ``auto`` without a GPU), else ``{part: torch.device}``."""
    if spec is None:
        return None
    parts = _parts(model)
    names = list(parts)
    tied = _tied(model)
    if spec == "auto":
        if not torch.cuda.is_available():
            log.info("%s auto: no CUDA GPU visible, nothing to place (the model stays on one device)", key)
            return None
        sizes = [(name, _own_params(mods, skip_tied=tied and name == "head")) for name, mods in parts.items()]
        plan = plan_device_map(sizes, [f"cuda:{i}" for i in range(torch.cuda.device_count())])
    elif isinstance(spec, Mapping):
        plan = expand_device_map(spec, names, key)
    else:
        raise ValueError(f"{key}: expected auto, null or a {{part: device}} map, got {spec!r}")
    if tied:
        if isinstance(spec, Mapping) and plan["head"] != plan["embed"]:
            raise ValueError(
                f"{key}: the model ties lm_head to embed_tokens (one weight), so head must be on embed's device "
                f"({plan['embed']}), not {plan['head']}"
            )
        plan["head"] = plan["embed"]
    return {name: resolve_device(device, f"{key}.{name}") for name, device in plan.items()}


def _own_params(modules: list[nn.Module], skip_tied: bool = False) -> int:
    seen = {id(p): p for m in modules for p in m.parameters()}
    total = sum(p.numel() for p in seen.values())
    if skip_tied:  # the tied lm_head weight is counted with the embeddings
        total -= sum(p.numel() for p in modules[-1].parameters())
    return total


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def _inputs_to_module_device(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    device = _module_device(module)
    if device is None:
        return args, kwargs
    return _to(args, device), _to(kwargs, device)


@dataclass
class Placement:
    """What :func:`place_model` did: the device of each part and the hooks it registered."""

    devices: dict[str, torch.device]
    handles: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        """Remove the hooks (the parts stay where they are)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def place_model(model: nn.Module, devices: Mapping[str, torch.device]) -> Placement:
    """Move each part of ``model`` to ``devices[part]`` and hook its modules so their inputs follow."""
    parts = _parts(model)
    placement = Placement(dict(devices))
    for name, modules in parts.items():
        for module in modules:
            module.to(devices[name])
            placement.handles.append(module.register_forward_pre_hook(_inputs_to_module_device, with_kwargs=True))
    counts: dict[str, int] = {}
    seen: set[int] = set()  # a tied weight counts once
    for name, device in devices.items():
        own = [p for m in parts[name] for p in m.parameters() if id(p) not in seen]
        seen.update(id(p) for p in own)
        counts[str(device)] = counts.get(str(device), 0) + sum(p.numel() for p in own)
    log.info("device map: %s", ", ".join(f"{dev} {n / 1e6:.1f}M params" for dev, n in counts.items()))
    return placement


__all__ = ["Placement", "expand_device_map", "place_model", "plan_device_map", "resolve_device_map"]
