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


def _run_first(dataset: str) -> str:
    """What to run before a run that lacks ``dataset``: the pipeline that produces it, by name."""
    from xoron_pipelines.hooks import all_pipelines, producers

    try:
        found = producers(dataset, all_pipelines())
    except Exception:  # a pipeline that cannot be built: fall back to the generic advice
        found = []
    if found:
        return (
            f"The {found[0]} pipeline produces it: run `kedro run --pipelines {found[0]}` first "
            "(or `kedro run` for everything)."
        )
    return "Run the pipeline that produces it first (see README.md: Pipelines), or check its entry in conf/base/catalog.yml."


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
                + _run_first(dataset)
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


# ------------------------------------------------------------------------- chat and status
def project_config(project: Path):
    """The project's config loader (as ``kedro run`` builds it, ``conf/base`` + ``conf/local``)."""
    from kedro.config import OmegaConfigLoader

    if not (project / "conf" / "base").is_dir():
        raise click.BadParameter(f"{project} is not a Kedro project (no conf/base)", param_hint="--project")

    from xoron_pipelines.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(project / "conf"), **CONFIG_LOADER_ARGS)
    loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
    return loader


def _quiet() -> None:
    """Keep a command's stdout for its answer: no INFO lines of the catalog's loads, no
    transformers progress bars."""
    import logging

    from transformers.utils import logging as hf_logging

    logging.getLogger("kedro").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()


def project_catalog(project: Path):
    """The project's data catalog; its relative paths resolve against the working directory (the
    commands below run in the project directory)."""
    from kedro.io import DataCatalog

    return DataCatalog.from_config(project_config(project)["catalog"])


def _load_stage(project: Path, stage: str):
    """(model, tokenizer) of a trained stage, through the catalog (``<stage>.model``, ``tokenizer``)."""
    from xoron_pipelines.training.schema import STAGES

    stages = [s for group in STAGES.values() for s in group]
    if stage not in stages:
        raise click.BadParameter(f"unknown stage {stage!r}; choose among {', '.join(stages)}", param_hint="--stage")
    catalog = project_catalog(project)
    model = catalog.get(f"{stage}.model")
    if not model.exists():
        raise click.ClickException(
            f"stage {stage} has no trained model yet ({model._describe()['path']}); "
            "run `kedro run` (or the pipeline of that stage) first"
        )
    return model.load(), catalog.load("tokenizer")


def _load_export(directory: Path):
    """(model, tokenizer) of an exported Hugging Face directory (``export_hf``)."""
    if not (directory / "config.json").is_file():
        raise click.BadParameter(f"{directory} is not a Hugging Face model directory (no config.json)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import xoron_pipelines.model  # noqa: F401  (registers model_type "xoron" with the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def chat_reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int, temperature: float, seed: int):
    """The assistant's next message: ``messages`` rendered with the chat template (the
    tokenizer's, else the project's), BOS first as in training, generated with
    :func:`xoron_pipelines.model.generation.generate` up to EOS, the closing assistant tag or
    ``max_new_tokens``, hidden blocks (thinking...) removed."""
    import torch

    from xoron_pipelines.evaluation.generation_tasks import truncate_at
    from xoron_pipelines.model.generation import generate
    from xoron_pipelines.tokens import CHAT_ROLES, render_chat, strip_hidden_tokens

    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        prompt = render_chat(messages, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if tokenizer.bos_token_id is not None and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:
        ids = ids[-max(1, limit - max_new_tokens) :]  # the newest turns, leaving room for the reply
    device = next(model.parameters()).device
    with torch.no_grad():
        out = generate(
            model,
            torch.tensor([ids], device=device),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            seed=seed,
        )
    text = tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=False)
    if tokenizer.eos_token and tokenizer.eos_token in text:
        text = text[: text.index(tokenizer.eos_token)]
    text = truncate_at(text, (CHAT_ROLES["assistant"][1], CHAT_ROLES["user"][0]))
    return strip_hidden_tokens(text)


@cli.command()
@click.option("--stage", help="a trained stage: its model (data/06_models/<stage>) and the project tokenizer")
@click.option(
    "--export",
    "export_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="an exported Hugging Face directory (export_hf, e.g. data/07_model_output/export/hf) instead",
)
@click.option("--system", help="a system message opening the conversation")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0: greedy")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True)
def chat(stage, export_dir, system, max_new_tokens, temperature, seed, project) -> None:
    """Chat with a trained stage (--stage tools) or an export (--export DIR): each line read from
    stdin is a user message, each reply is printed on its own (a multi-turn conversation;
    end with Ctrl-D, or pipe the lines in)."""
    import contextlib
    import sys

    if (stage is None) == (export_dir is None):
        raise click.UsageError("give --stage STAGE or --export DIR")
    project = project.resolve()
    _quiet()
    with contextlib.chdir(project):
        model, tokenizer = _load_stage(project, stage) if stage else _load_export(export_dir.resolve())
    model.eval()
    messages = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("you> ", nl=False)
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = chat_reply(model, tokenizer, messages, max_new_tokens, temperature, seed)
        messages.append({"role": "assistant", "content": reply})
        click.echo(f"{'model> ' if interactive else ''}{reply}")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def stage_rows(catalog) -> list[list[str]]:
    """Per training stage: model present, steps, val loss (its train summary), and its checkpoint
    store: configurations, the newest configuration's newest step."""
    from xoron_pipelines.training.checkpoint import list_checkpoints
    from xoron_pipelines.training.schema import STAGES

    rows = []
    for stage in (s for group in STAGES.values() for s in group):
        model = catalog.get(f"{stage}.model")
        summary_ds = catalog.get(f"{stage}.train_summary")
        summary = summary_ds.load() if summary_ds.exists() else {}
        store = catalog.load(f"{stage}.checkpoints").path
        configs = (
            sorted((d for d in store.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
            if store.is_dir()
            else []
        )
        newest = list_checkpoints(configs[-1]) if configs else []
        loss = summary.get("eval_loss")
        rows.append(
            [
                stage,
                model._describe()["path"] if model.exists() else "-",
                str(summary.get("steps", "-")),
                f"{loss:.3f}" if isinstance(loss, (int, float)) else "-",
                str(store),
                str(len(configs)),
                f"{configs[-1].name}@{newest[-1][0]}" if newest else "-",
            ]
        )
    return rows


def _parent(run, names: dict[str, str]) -> str:
    """The name of a run's parent run (its id's start when not among ``names``), or ``-``."""
    parent = run.data.tags.get("mlflow.parentRunId")
    return names.get(parent, parent[:8]) if parent else "-"


def run_rows(project: Path, limit: int = 10) -> list[list[str]]:
    """The newest MLflow runs of the project's experiment (mlflow.yml): name, status, start, parent."""
    import datetime

    config = project_config(project)["mlflow"]
    uri = config.get("server", {}).get("mlflow_tracking_uri") or "mlruns"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri if ":" in uri else (project / uri).as_uri())
    experiment = client.get_experiment_by_name(config.get("tracking", {}).get("experiment", {}).get("name", ""))
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
    names = {run.info.run_id: run.info.run_name for run in runs}
    return [
        [
            run.info.run_name,
            run.info.status,
            datetime.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S"),
            _parent(run, names),
            run.info.run_id,
        ]
        for run in runs
    ]


@cli.command()
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True)
@click.option("--runs", "limit", default=10, show_default=True, type=click.IntRange(min=0), help="MLflow runs listed")
def status(project, limit) -> None:
    """What this project has trained: per stage its model, steps and val loss, its checkpoints
    (store, configurations, newest step), and the newest MLflow runs."""
    import contextlib

    project = project.resolve()
    _quiet()
    with contextlib.chdir(project):
        stages = stage_rows(project_catalog(project))
        runs = run_rows(project, limit) if limit else []
    headers = ["stage", "model", "steps", "val loss", "checkpoint store", "configurations", "newest"]
    click.echo(_table(headers, stages))
    click.echo("")
    if runs:
        click.echo(_table(["MLflow run", "status", "start", "parent", "run id"], runs))
    else:
        click.echo("no MLflow runs yet")
