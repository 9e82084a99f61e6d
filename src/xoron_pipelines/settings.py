"""Project settings (Kedro)."""

from xoron_pipelines.hooks import (
    DataLockHook,
    MissingInputsHook,
    ParameterValidationHook,
    RunSummaryHook,
    StaleRunsHook,
)

# MissingInputsHook after DataLockHook: both run first (tryfirst), the later registered first
HOOKS = (ParameterValidationHook(), DataLockHook(), MissingInputsHook(), StaleRunsHook(), RunSummaryHook())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
