"""Training engine core: config, data sources, optimizer, schedules, checkpoints, environment, loop.

Entry point: :func:`train` (``train(model, batches, cfg, ckpt_dir=...) -> TrainResult``).
"""

from xoron_pipelines.training.checkpoint import (
    CheckpointWriter,
    CorruptCheckpointError,
    latest_valid_checkpoint,
    load_checkpoint,
    verify_checkpoint,
)
from xoron_pipelines.training.config import TrainConfig
from xoron_pipelines.training.data import BatchSource, ParquetBatchSource, TensorBatchSource
from xoron_pipelines.training.engine import NonFiniteLossError, TrainResult, TrainState, lm_loss, train
from xoron_pipelines.training.environment import (
    EnvironmentPaths,
    detect_environment,
    environment_paths,
    get_device_map,
)
from xoron_pipelines.training.optim import OptimizerUnavailableError, build_optimizer
from xoron_pipelines.training.reproducibility import deterministic_mode, seed_everything
from xoron_pipelines.training.schedule import WarmupDecay, build_scheduler

__all__ = [
    "BatchSource",
    "CheckpointWriter",
    "CorruptCheckpointError",
    "EnvironmentPaths",
    "NonFiniteLossError",
    "OptimizerUnavailableError",
    "ParquetBatchSource",
    "TensorBatchSource",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "WarmupDecay",
    "build_optimizer",
    "build_scheduler",
    "deterministic_mode",
    "detect_environment",
    "environment_paths",
    "get_device_map",
    "latest_valid_checkpoint",
    "lm_loss",
    "load_checkpoint",
    "seed_everything",
    "train",
    "verify_checkpoint",
]
