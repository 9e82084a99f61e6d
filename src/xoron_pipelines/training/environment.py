"""Runtime environment detection, per-environment paths and the multi-GPU device map (seed 000).

Detection (first match wins), as in Xoron-Dev:

* ``kaggle``    — ``/kaggle`` exists or ``KAGGLE_KERNEL_RUN_TYPE`` is set;
* ``colab``     — ``google.colab`` is importable or ``COLAB_RELEASE_TAG`` / ``COLAB_GPU`` is set;
* ``lightning`` — ``/teamspace`` exists or ``LIGHTNING_CLOUDSPACE_HOST`` is set;
* ``local``     — anything else.

Paths per environment (seed 000's table; "..." there is Lightning's ``/teamspace/studios/this_studio``)::

    env        temp_dir           output_dir (checkpoints)             final_model_dir
    kaggle     /kaggle/tmp/xoron  /kaggle/tmp/xoron/checkpoints        /kaggle/working/xoron-final
    colab      /content/tmp       /content/xoron-checkpoints           /content/xoron-final
    lightning  /tmp/xoron         <studio>/xoron-checkpoints           <studio>/xoron-final
    local      ./tmp              ./xoron-checkpoints                  ./xoron-final
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Environment = Literal["kaggle", "colab", "lightning", "local"]
LIGHTNING_STUDIO = "/teamspace/studios/this_studio"


@dataclass(frozen=True)
class EnvironmentPaths:
    """Where a run keeps its files in one environment (seed 000 TrainingConfig's path fields)."""

    environment: Environment
    temp_dir: str
    datasets_dir: str
    output_dir: str
    model_path: str
    final_model_dir: str


_PATHS: dict[str, EnvironmentPaths] = {
    "kaggle": EnvironmentPaths(
        "kaggle",
        "/kaggle/tmp/xoron",
        "/kaggle/tmp/xoron/datasets",
        "/kaggle/tmp/xoron/checkpoints",
        "/kaggle/tmp/xoron/model",
        "/kaggle/working/xoron-final",
    ),
    "colab": EnvironmentPaths(
        "colab",
        "/content/tmp",
        "/content/tmp/datasets",
        "/content/xoron-checkpoints",
        "/content/xoron-dev-model",
        "/content/xoron-final",
    ),
    "lightning": EnvironmentPaths(
        "lightning",
        "/tmp/xoron",
        "/tmp/xoron/datasets",
        f"{LIGHTNING_STUDIO}/xoron-checkpoints",
        f"{LIGHTNING_STUDIO}/xoron-dev-model",
        f"{LIGHTNING_STUDIO}/xoron-final",
    ),
    "local": EnvironmentPaths(
        "local", "./tmp", "./tmp/datasets", "./xoron-checkpoints", "./xoron-dev-model", "./xoron-final"
    ),
}


def _colab_importable() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no ``google`` namespace package at all
        return False


def detect_environment(
    environ: Mapping[str, str] | None = None,
    exists: Callable[[str], bool] = os.path.exists,
    colab_importable: Callable[[], bool] = _colab_importable,
) -> Environment:
    """``kaggle`` / ``colab`` / ``lightning`` / ``local`` (the probes are injectable for tests)."""
    env = os.environ if environ is None else environ
    if exists("/kaggle") or "KAGGLE_KERNEL_RUN_TYPE" in env:
        return "kaggle"
    if colab_importable() or "COLAB_RELEASE_TAG" in env or "COLAB_GPU" in env:
        return "colab"
    if exists("/teamspace") or "LIGHTNING_CLOUDSPACE_HOST" in env:
        return "lightning"
    return "local"


def environment_paths(environment: str | None = None) -> EnvironmentPaths:
    """The path table row of ``environment`` (detected when None)."""
    name = environment or detect_environment()
    if name not in _PATHS:
        raise ValueError(f"unknown environment {name!r}; expected one of {sorted(_PATHS)}")
    return _PATHS[name]


# Seed 000's 2-GPU layout: the modality encoders / decoders / generators on GPU 0, the LLM on GPU 1.
MODALITY_COMPONENTS = (
    "vision_encoder",
    "video_encoder",
    "audio_encoder",
    "audio_decoder",
    "waveform_decoder",
    "projector",
    "generator",
    "video_generator",
)
LLM_COMPONENTS = ("llm", "cross_attention", "modality_markers")


def get_device_map(num_gpus: int) -> dict[str, str]:
    """Component -> device for model parallelism over ``num_gpus`` GPUs.

    0 GPUs: everything on ``cpu``; 1: everything on ``cuda:0``; 2: seed 000's layout (modality
    components on ``cuda:0``; ``llm``, ``cross_attention``, ``modality_markers`` on ``cuda:1``);
    N > 2: the LLM group keeps a GPU of its own (the last) and the modality components are spread
    round-robin, in the order above, over the other N - 1.
    """
    if num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
    if num_gpus <= 1:
        device = "cuda:0" if num_gpus == 1 else "cpu"
        return {c: device for c in MODALITY_COMPONENTS + LLM_COMPONENTS}
    llm_device = f"cuda:{num_gpus - 1}"
    out = {c: f"cuda:{i % (num_gpus - 1)}" for i, c in enumerate(MODALITY_COMPONENTS)}
    out.update({c: llm_device for c in LLM_COMPONENTS})
    return out
