"""Project hooks."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from xoron_pipelines.validation import validate_all

log = logging.getLogger(__name__)


class ParameterValidationHook:
    """Validate all parameters as soon as the context exists, before any node runs."""

    @hook_impl
    def after_context_created(self, context) -> None:
        validated = validate_all(context.params)
        log.debug("validated parameter groups: %s", sorted(validated))
