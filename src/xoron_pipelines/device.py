"""The one device resolver: a ``device`` parameter (``auto | cpu | cuda | cuda:N``) -> ``torch.device``,
and what follows from the device for training (precision, compile, kernels, peak FLOP/s).

Every pipeline that runs a model takes its device from here (the training stages, evaluation,
export's parity checks, the latent model, the embedding-cache encoder), so ``auto`` means the same
everywhere: the first CUDA device when one is visible, else the CPU. An explicit ``cuda`` /
``cuda:N`` on a machine without that GPU is an error naming the parameter, raised when the
parameters are validated (:data:`DeviceSpec` checks availability), before any work.

On a resolved device:

* :func:`resolve_precision` -- ``auto``: bf16 autocast on a CUDA GPU with native bf16, fp32
  otherwise (the CPU);
* :func:`resolve_compile` -- ``auto``: ``torch.compile`` on CUDA, eager on the CPU;
* :func:`resolve_kernels` -- the model config's ``kernels: auto``: Triton on CUDA, the torch
  references on the CPU (the per-call choice is :func:`xoron_pipelines.kernels.dispatch.resolve_impl`);
* :func:`peak_flops` -- the MFU denominator: :data:`GPU_PEAK_FLOPS` matched on the GPU's name,
  in the column of the precision, or :data:`CPU_PEAK_FLOPS`; None (and one warning) for a GPU
  not in the table.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field

log = logging.getLogger(__name__)

#: what a ``device`` parameter accepts (validated by the schemas that use :data:`DeviceSpec`)
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def _missing(device: torch.device) -> str | None:
    """Why the CUDA ``device`` cannot be used here (None when it can)."""
    if not torch.cuda.is_available():
        return "no CUDA device is available on this machine; use auto or cpu"
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"only {torch.cuda.device_count()} CUDA device(s) are visible; use auto, cuda or a lower index"
    return None


def resolve_device(spec: str | None = "auto", key: str = "device") -> torch.device:
    """``auto`` (or None): ``cuda`` when a CUDA device is visible, else ``cpu``; ``cpu``; ``cuda``
    or ``cuda:N``: that GPU, or a ``ValueError`` naming ``key`` when it is not there."""
    spec = spec or "auto"
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"{key}: {spec!r} is not a device this project uses (auto, cpu, cuda, cuda:N)")
    if (reason := _missing(device)) is not None:
        raise ValueError(f"{key} is {spec} but {reason}")
    return device


def _available(spec: str) -> str:
    """Validation-time check of a ``device`` value (the error's location names the key)."""
    device = torch.device(spec) if spec != "auto" else None
    if device is not None and device.type == "cuda" and (reason := _missing(device)) is not None:
        raise ValueError(f"{spec} asks for a GPU but {reason}")
    return spec


#: the type of every ``device`` knob: the pattern, and the GPU must be there (checked when the
#: parameters are validated, so a wrong device stops the run before any work)
DeviceSpec = Annotated[
    str, Field(pattern=DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N"), AfterValidator(_available)
]


def device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu``."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


# ------------------------------------------------------------------------------ precision / compile / kernels
Precision = Literal["fp32", "bf16", "fp16"]


def bf16_supported(device: torch.device) -> bool:
    """A CUDA device with native bf16 (Ampere and newer; not bf16 emulated on older GPUs)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``auto``: ``bf16`` on a CUDA GPU with native bf16, else ``fp32``; an explicit value as is,
    except ``bf16`` on a GPU without it (a ``ValueError``)."""
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16" and device.type == "cuda" and not bf16_supported(device):
        raise ValueError(f"precision bf16: {device_name(device)} has no native bf16; use auto, fp16 or fp32")
    return precision  # type: ignore[return-value]


def resolve_compile(compile: bool | str, device: torch.device) -> bool:
    """``auto``: ``torch.compile`` on CUDA, eager elsewhere; true / false as given."""
    return device.type == "cuda" if compile == "auto" else bool(compile)


def resolve_kernels(kernels: str | None, device: torch.device) -> Literal["triton", "torch"]:
    """The kernels a model config's ``kernels`` (auto | triton | torch) runs on ``device``:
    ``auto`` = Triton on CUDA (when triton is installed), the torch references elsewhere."""
    from xoron_pipelines.kernels.dispatch import triton_available

    if kernels in (None, "auto"):
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    return "triton" if kernels == "triton" else "torch"


# ------------------------------------------------------------------------------ peak FLOP/s (MFU)
#: assumed peak of the default CPU run: 2 cores x 2.5 GHz x 32 fp32 FLOP/cycle (AVX2: two 8-wide
#: FMA units, 2 FLOP per FMA)
CPU_PEAK_FLOPS = 1.6e11

#: dense (no 2:4 sparsity) peak FLOP/s per column: ``bf16`` / ``fp16`` tensor cores (fp32
#: accumulate), ``tf32`` tensor cores, ``fp32`` CUDA cores. Matched in order on the lower-cased
#: ``torch.cuda.get_device_name``. NVIDIA publishes the tensor figures with sparsity: halved here.
#: Sources (NVIDIA data sheets): H100 / H200 -- nvidia.com/en-us/data-center/h100 and /h200 (SXM:
#: bf16 1979 / tf32 989 / fp32 67 TFLOPS sparse-quoted; PCIe: 1513 / 756 / 51; NVL: 1671 / 835 / 60);
#: A100 -- nvidia-a100-datasheet (312 / 156 / 19.5 dense, SXM and PCIe alike); L40S -- l40s
#: product brief (733 / 366 / 91.6); L40 -- l40 data sheet (362 / 181 / 90.5); L4 -- l4 data sheet
#: (242 / 120 / 30.3); A10 / A10G -- a10-datasheet (250 / 125 / 31.2; AWS publishes no separate
#: A10G sheet, so the A10's figures, as Lightning's throughput table does); RTX 6000 Ada / A6000 /
#: A40 -- their data sheets; RTX 4090 / 3090 -- Ada / Ampere GA102 whitepapers (fp32-accumulate
#: tensor rate); V100 -- volta-v100-datasheet (fp16 125 / fp32 15.7 SXM2; 112 / 14 PCIe; no bf16,
#: no tf32); T4 -- t4 data sheet (fp16 65 / fp32 8.1).
GPU_PEAK_FLOPS: tuple[tuple[str, str, dict[str, float]], ...] = (
    # (regex on the lower-cased device name, label, {column: FLOP/s})
    (r"h200", "H200", {"bf16": 989.5e12, "fp16": 989.5e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    (r"h100.*nvl", "H100 NVL", {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}),
    (r"h100.*(pcie|hbm2e)", "H100 PCIe", {"bf16": 756.5e12, "fp16": 756.5e12, "tf32": 378e12, "fp32": 51.2e12}),
    (r"h100", "H100 SXM", {"bf16": 989.5e12, "fp16": 989.5e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    (r"a100", "A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    (r"l40s", "L40S", {"bf16": 366.5e12, "fp16": 366.5e12, "tf32": 183e12, "fp32": 91.6e12}),
    (r"l40", "L40", {"bf16": 181e12, "fp16": 181e12, "tf32": 90.5e12, "fp32": 90.5e12}),
    (r"\bl4\b", "L4", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    (r"a10g?\b", "A10 / A10G", {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
    (r"rtx 6000 ada", "RTX 6000 Ada", {"bf16": 364.2e12, "fp16": 364.2e12, "tf32": 182.1e12, "fp32": 91.1e12}),
    (r"a6000", "RTX A6000", {"bf16": 154.8e12, "fp16": 154.8e12, "tf32": 77.4e12, "fp32": 38.7e12}),
    (r"a40\b", "A40", {"bf16": 149.7e12, "fp16": 149.7e12, "tf32": 74.8e12, "fp32": 37.4e12}),
    (r"rtx 4090", "RTX 4090", {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12}),
    (r"rtx 3090", "RTX 3090", {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12}),
    (r"v100.*pcie", "V100 PCIe", {"fp16": 112e12, "fp32": 14e12}),
    (r"v100", "V100 SXM2", {"fp16": 125e12, "fp32": 15.7e12}),
    (r"\bt4\b", "T4", {"fp16": 65e12, "fp32": 8.1e12}),
)

_warned: set[tuple[str, str]] = set()


def gpu_peaks(name: str) -> tuple[str, dict[str, float]] | None:
    """(label, peaks) of the first :data:`GPU_PEAK_FLOPS` row matching the device name."""
    lowered = name.lower()
    for pattern, label, peaks in GPU_PEAK_FLOPS:
        if re.search(pattern, lowered):
            return label, peaks
    return None


def peak_flops(device: torch.device, precision: str, tf32: bool = False) -> float | None:
    """Peak FLOP/s of ``device`` at ``precision`` (resolved: fp32 / bf16 / fp16): the column
    ``bf16`` / ``fp16``, or ``tf32`` for fp32 with TF32 allowed, else ``fp32``. The CPU:
    :data:`CPU_PEAK_FLOPS`. A GPU (or a precision) the table does not know: None, with a warning
    logged once per GPU name -- never a made-up number."""
    if device.type != "cuda":
        return CPU_PEAK_FLOPS
    name = torch.cuda.get_device_name(device.index if device.index is not None else torch.cuda.current_device())
    column = precision if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
    found = gpu_peaks(name)
    value = found[1].get(column) if found else None
    if value is None and (name, column) not in _warned:
        _warned.add((name, column))
        log.warning(
            "no peak FLOP/s known for %s at %s: MFU is not logged (set tracking.peak_flops to a number)",
            name,
            column,
        )
    return value


# ------------------------------------------------------------------------------ TF32
class tf32_mode:
    """Context manager: TF32 matmuls / convolutions allowed (``enabled``) or not inside the block on
    a CUDA device; the previous settings are restored after it. A no-op on the CPU."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.active = device.type == "cuda"
        self.enabled = enabled

    def __enter__(self) -> tf32_mode:
        if self.active:
            self._prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = self.enabled
            torch.backends.cudnn.allow_tf32 = self.enabled
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._prev
