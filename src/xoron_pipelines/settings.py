"""Project settings (Kedro)."""

from xoron_pipelines.hooks import ParameterValidationHook, RunSummaryHook

HOOKS = (ParameterValidationHook(), RunSummaryHook())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
