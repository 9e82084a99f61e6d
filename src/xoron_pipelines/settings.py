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

# Parameters are merged key by key ("soft"): a conf/local (or --env) file that sets one nested
# knob, e.g. data_processing.tokenizer.vocab_size, keeps every other value of conf/base. Lists
# (data_processing.sources, ...) are replaced as a whole; a null replaces a whole section.
# `kedro run --params a.b.c=v` merges the same way (Kedro's own rule for runtime parameters).
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
}
