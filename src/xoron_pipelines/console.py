"""The project's one warning policy: which third-party warnings a run does not print, and why.

A default ``kedro run`` prints no warning of the project's own (a test runs pipelines with
warnings as errors for ``xoron_pipelines``). What remains comes from the libraries, and only
the warnings below are filtered, each matched narrowly (message and warning module) and with the
reason a user cannot act on it; anything else still shows. :func:`install` runs when the package
is imported (``settings.py``, ``cli.py``, ``python -m xoron_pipelines``, the tests).

Not reachable from here: when kedro-mlflow is imported (by the ``kedro`` command before the
project, to load its plugins), MLflow warns once that kedro-mlflow's ``KedroPipelineModel.predict``
has no type hints, under a ``simplefilter("once")`` of its own that overrides any filter.
"""

from __future__ import annotations

import logging
import re
import warnings

#: (message regex, category, module regex of the warning's origin, why it is filtered)
FILTERED: tuple[tuple[str, type[Warning], str, str], ...] = (
    (
        r"register_new_resolver\(\) is deprecated",
        UserWarning,
        r"kedro",
        "Kedro 1.x's config loader and kedro-mlflow's hook register their OmegaConf resolvers under "
        "the old name; nothing in a project calls it",
    ),
    (
        r"One or more dataset names contain '\.' characters",
        UserWarning,
        r"(xoron_pipelines|kedro)\b",  # the warning names the module that built the node
        "the dots are Kedro's own namespaces: pipeline(namespace=stage) names a stage's datasets "
        "<stage>.model etc., and the next stage (another namespace), evaluation, export and the "
        "group summaries read them. Kedro 1.x's check (kedro/pipeline/node.py, "
        "_node_dataset_name_validation) compares a dataset's prefix with the reading node's "
        "top-level namespace only, so it cannot tell such a cross-namespace read from a hand-typed "
        "dotted name (kedro-org/kedro#5021). Renaming them would lose `--namespaces` and the "
        "catalog's {stage}.* factories",
    ),
)


#: (logger, message regex, why): log records of a library that a run does not print
FILTERED_LOGS: tuple[tuple[str, str, str], ...] = (
    (
        "lm_eval.models.huggingface",
        r"`pretrained` model kwarg is not of type `str`|Passed an already-initialized model through `pretrained`",
        "evaluation/harness.py hands lm-evaluation-harness our model instance on purpose (nothing is "
        "downloaded, one process): lm_eval warns about exactly that, once per model",
    ),
)


class _DropMessages(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install() -> None:
    """Add the filters of :data:`FILTERED` and :data:`FILTERED_LOGS` (idempotent)."""
    for message, category, module, _why in FILTERED:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, pattern, _why in FILTERED_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMessages(pattern))
