"""`kedro run` of this project: Kedro's own ``run`` command, with user errors shown short.

Kedro picks up a ``cli.py`` beside ``settings.py`` and lets its ``run`` replace the built-in one
(also for ``python -m xoron_pipelines``). This ``run`` has exactly Kedro's options plus
``--traceback``; it only changes how errors caused by the user's input are shown: a bad parameter
(:class:`~xoron_pipelines.validation.ParameterError`, raised before any node runs), a missing
configuration file, an unknown pipeline name, inputs of the pipeline that an earlier run must
produce first (:class:`~xoron_pipelines.hooks.MissingInputsError`: one paragraph naming the
pipeline to run first), a dataset that cannot be loaded or saved (an
input that does not exist yet, a file that cannot be read), tokenizer and packed data of two
different data_processing runs, the data lock held too long by another run, or no sandbox for
generated code print a few lines saying what is wrong and where, and the command
exits with status 1, instead of a traceback of some hundred lines. Any other exception is a bug
and keeps its traceback; ``kedro run --traceback`` shows it for user errors too.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from kedro.config import MissingConfigException
from kedro.framework.cli.project import run as _kedro_run
from kedro.io import DatasetError

from xoron_pipelines.datasets.generation import GenerationMismatchError
from xoron_pipelines.hooks import MissingInputsError
from xoron_pipelines.project_lock import ProjectLockTimeout
from xoron_pipelines.sandbox import SandboxUnavailableError
from xoron_pipelines.validation import ParameterError

#: exceptions that report a problem of the user's input or setting, not of the code: a bad
#: parameter, configuration or dataset, inputs an earlier run must produce first, data of two
#: data_processing runs mixed, the project's data lock held by another run for too long, no
#: sandbox for generated code on this machine
USER_ERRORS: tuple[type[BaseException], ...] = (
    ParameterError,
    MissingInputsError,
    DatasetError,
    MissingConfigException,
    GenerationMismatchError,
    ProjectLockTimeout,
    SandboxUnavailableError,
)

#: most lines of a user error's message that are shown
MAX_LINES = 12


_NO_PIPELINE_MODULE = "An error occurred while importing the 'xoron_pipelines.pipelines."


def _unknown_pipeline(exc: BaseException) -> bool:
    """Kedro's error for a ``--pipelines`` name that is not a pipeline: an ImportError naming a
    module that does not exist (no cause; a pipeline that fails to import has one), or, for a name
    missing from the registry, a plain ValueError."""
    if type(exc) is ImportError:
        return str(exc).startswith(_NO_PIPELINE_MODULE) and exc.__cause__ is None
    return type(exc) is ValueError and str(exc).startswith("Failed to find the pipeline named")


def pipeline_names() -> list[str]:
    """The pipelines ``--pipelines`` accepts (one package per pipeline under ``pipelines/``)."""
    from xoron_pipelines import pipelines

    root = Path(pipelines.__file__).parent
    return sorted(p.parent.name for p in root.glob("*/pipeline.py"))


def is_user_error(exc: BaseException) -> bool:
    """A bad parameter, configuration or dataset, or an unknown ``--pipelines`` name."""
    return isinstance(exc, USER_ERRORS) or _unknown_pipeline(exc)


def _missing_file(exc: BaseException) -> FileNotFoundError | None:
    """The FileNotFoundError behind ``exc`` (its cause / context chain), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, FileNotFoundError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe(exc: BaseException) -> str:
    """A short message for a user error: what is wrong, which key or dataset, where."""
    if isinstance(exc, ParameterError):
        text = str(exc)
    elif isinstance(exc, DatasetError):
        dataset = str(exc).split(":", 1)[0]
        missing = _missing_file(exc)
        if missing is not None:
            text = (
                f"Input error: dataset '{dataset}' does not exist yet ({missing.filename or missing}).\n"
                "Run the pipeline that produces it first (see README.md: Pipelines), "
                "or check its entry in conf/base/catalog.yml."
            )
        else:
            text = f"Dataset error: {exc}\n(kedro run --traceback shows where it was raised)"
    elif isinstance(exc, MissingConfigException):
        text = f"Configuration error: {exc}"
    elif type(exc) is ImportError:
        name = str(exc).removeprefix(_NO_PIPELINE_MODULE).split("'", 1)[0]
        text = f"Unknown pipeline '{name}': choose among {', '.join(pipeline_names())}"
    else:
        text = str(exc)
    lines = text.strip().splitlines()
    if len(lines) > MAX_LINES:
        lines = [*lines[: MAX_LINES - 1], f"... ({len(lines) - MAX_LINES + 1} more lines; --traceback shows all)"]
    return "\n".join(lines)


def short_user_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a click callback: a user error (:func:`is_user_error`) becomes a :class:`click.ClickException`
    (click prints ``Error: <message>`` and exits 1), unless ``traceback=True`` is passed."""

    @functools.wraps(callback)
    def wrapper(*args: Any, traceback: bool = False, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except Exception as exc:
            if traceback or not is_user_error(exc):
                raise
            raise click.ClickException(describe(exc)) from None

    return wrapper


@click.group(name="xoron_pipelines")
def cli() -> None:
    """Project commands of xoron-pipelines."""


run = copy.copy(_kedro_run)
run.params = [
    *_kedro_run.params,
    click.Option(
        ["--traceback"],
        is_flag=True,
        default=False,
        help="Show the full traceback of a parameter, configuration or dataset error.",
    ),
]
run.callback = short_user_errors(_kedro_run.callback)
cli.add_command(run, "run")
