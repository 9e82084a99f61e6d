"""Project settings (Kedro)."""

from xoron_pipelines.hooks import DataLockHook, ParameterValidationHook, RunSummaryHook

HOOKS = (ParameterValidationHook(), DataLockHook(), RunSummaryHook())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
