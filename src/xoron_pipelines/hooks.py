"""Project hooks: parameter validation before any node (nodes receive the validated objects), the data lock and staging area of a
run, MLflow runs of killed processes closed, a short summary after a run."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from xoron_pipelines.datasets.generation import STAGING_ENV
from xoron_pipelines.project_lock import LOCK_PATH, ProjectLock
from xoron_pipelines.validation import validate_all

log = logging.getLogger(__name__)

#: columns of the training summary: (header, key in ``<stage>.train_summary``, format)
_TRAIN_COLUMNS = (
    ("stage", "stage", "{}"),
    ("mix", "data_mix", "{}"),
    ("procs", "processes", "{}"),
    ("steps", "steps", "{}"),
    ("tokens", "tokens_seen", "{:,}"),
    ("train loss", "train_loss", "{:.3f}"),
    ("val loss", "eval_loss", "{:.3f}"),
    ("val ppl", "eval_perplexity", "{:.1f}"),
    ("unigram H", "unigram_entropy", "{:.3f}"),
    ("tok/s", "tokens_per_s", "{:.0f}"),
    ("wall s", "wall_s", "{:.0f}"),
)


# _registry_note: the hooks take what they need to know about the pipelines (the datasets
# data_processing writes) from xoron_pipelines.pipeline_registry, imported
# when a run starts rather than when Kedro loads settings.py: the pipelines import torch, and every
# `kedro` command (--help, viz) loads the settings.

#: what :func:`validated_input` returns for an input that is not a validated parameter
_NOT_VALIDATED = object()


def validated_input(validated: Mapping[str, BaseModel], name: str) -> Any:
    """The validated value of the node input ``name`` (``params:<group>`` or a nested
    ``params:<group>.<key>...`` that Kedro creates), found in ``validated`` (group -> schema
    object), or :data:`_NOT_VALIDATED` when it is not a parameter of a validated group. A deep
    copy: like Kedro's parameter datasets, each node gets its own."""
    group, *path = name.removeprefix("params:").split(".")
    if not name.startswith("params:") or group not in validated:
        return _NOT_VALIDATED
    value: Any = validated[group]
    for key in path:
        if isinstance(value, BaseModel) and key in type(value).model_fields:
            value = getattr(value, key)
        elif isinstance(value, Mapping) and key in value:
            value = value[key]
        else:
            return _NOT_VALIDATED
    return value.model_copy(deep=True) if isinstance(value, BaseModel) else copy.deepcopy(value)


class ParameterValidationHook:
    """Validate all parameters once, as soon as the context exists and before any node runs, and
    hand each node the validated objects of its ``params:`` inputs (``params:<group>`` -> the
    group's schema object, ``params:<group>.<key>`` -> that field's value, e.g.
    ``params:pretrain.stages.language`` -> a ``StageParams``). A node's
    ``Params.model_validate(params)`` on such an object returns it unchanged (pydantic v2 does not
    revalidate instances), so nodes stay callable with plain dicts and nothing is validated twice.
    kedro-mlflow still logs the flat parameter keys: every ``before_node_run`` hook sees the
    catalog's plain values; Kedro applies the replacements after all of them ran."""

    def __init__(self) -> None:
        self._validated: dict[str, BaseModel] = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        # the --params of `kedro run` (Kedro keeps them on the context) name the command line as
        # the origin of a bad value
        self._validated = validate_all(context.params, getattr(context, "_runtime_params", None))
        log.debug("validated parameter groups: %s", sorted(self._validated))

    @hook_impl
    def before_node_run(self, node, inputs: dict[str, Any]) -> dict[str, Any] | None:
        replaced = {name: validated_input(self._validated, name) for name in inputs if name.startswith("params:")}
        return {name: value for name, value in replaced.items() if value is not _NOT_VALIDATED} or None


#: per-run staging areas of node outputs, relative to the project root
STAGING_PATH = Path("data") / ".staging"
#: default of ``data_processing.lock_timeout_s`` (also in its schema)
DEFAULT_LOCK_TIMEOUT_S = 600.0


def lock_mode(pipeline) -> str | None:
    """``exclusive`` when ``pipeline`` writes a data_processing output, ``shared`` when it only
    reads one, None when it touches none."""
    from xoron_pipelines.pipeline_registry import data_processing_outputs  # see _registry_note

    protected = data_processing_outputs()
    if protected & set(pipeline.all_outputs()):
        return "exclusive"
    if protected & set(pipeline.inputs()):
        return "shared"
    return None


def staging_area_name() -> str:
    """``<pid>@<host>.<hex>``: the staging area of this run (whose it is, for stale removal)."""
    return f"{os.getpid()}@{socket.gethostname()}.{uuid.uuid4().hex[:8]}"


def _remove_stale_staging(root: Path) -> None:
    """Remove the staging areas of dead runs on this host; called only under the exclusive lock,
    so no publish can be using them."""
    host = socket.gethostname()
    for area in root.glob(f"*@{host}.*") if root.is_dir() else []:
        pid, _, rest = area.name.partition("@")
        if pid.isdigit() and rest.rpartition(".")[0] == host and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                log.info("removing the staging area of a dead run: %s", area)
                shutil.rmtree(area, ignore_errors=True)
            except PermissionError:
                pass


class DataLockHook:
    """Serialise ``data_processing`` with the runs that read its outputs
    (:mod:`xoron_pipelines.project_lock`: exclusive to write, shared to read), and give the run a
    staging area ``data/.staging/<pid>@<host>.<hex>`` (same filesystem as the outputs, so
    publishing is a rename) that is removed when the run ends, failed or not. Runs first among the
    ``before_pipeline_run`` hooks, so a run that cannot get the lock starts nothing (no MLflow run)."""

    def __init__(self) -> None:
        self._project: Path | None = None
        self._timeout = DEFAULT_LOCK_TIMEOUT_S
        self._lock: ProjectLock | None = None
        self._staging: Path | None = None
        self._saved_env: str | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project = Path(context.project_path)
        group = context.params.get("data_processing") or {}
        try:  # validated (and a bad value reported, naming the key) by ParameterValidationHook
            self._timeout = float(group.get("lock_timeout_s", DEFAULT_LOCK_TIMEOUT_S))
        except (TypeError, ValueError):
            self._timeout = DEFAULT_LOCK_TIMEOUT_S

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self._project is None:
            return
        mode = lock_mode(pipeline)
        if mode is not None:
            names = run_params.get("pipeline_names") or ["__default__"]
            what = f"kedro run --pipelines {','.join(names)} (pid {os.getpid()})"
            self._lock = ProjectLock(self._project / LOCK_PATH, mode, self._timeout, what).acquire()
        root = self._project / STAGING_PATH
        if mode == "exclusive":
            _remove_stale_staging(root)
        self._staging = root / staging_area_name()
        self._staging.mkdir(parents=True, exist_ok=True)
        self._saved_env = os.environ.get(STAGING_ENV)
        os.environ[STAGING_ENV] = str(self._staging)

    def _end(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
            if self._saved_env is None:
                os.environ.pop(STAGING_ENV, None)
            else:
                os.environ[STAGING_ENV] = self._saved_env
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        self._end()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        self._end()


class StaleRunsHook:
    """Tag the ``kedro run``'s MLflow run with its process, and end as KILLED the runs that a
    killed earlier process left RUNNING (see :func:`xoron_pipelines.tracking.mark_dead_runs`).

    kedro-mlflow (a plugin, so its hooks run before the project's) has opened the run by then;
    without an active run (tracking disabled) there is nothing to do."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        from xoron_pipelines.tracking import active_run, mark_dead_runs, process_tags, tag_active_run

        try:
            run = active_run()
            if run is None:
                return
            tag_active_run(process_tags())
            mark_dead_runs([run.info.experiment_id], keep={run.info.run_id})
        except Exception as exc:  # bookkeeping of old runs must never stop this one
            log.warning("could not check for MLflow runs left RUNNING by killed processes: %s", exc)


def _cell(summary: dict[str, Any], key: str, fmt: str) -> str:
    value = summary.get(key)
    return "-" if value is None else fmt.format(value)


def run_summary(outputs: set[str], load) -> list[Table]:
    """Tables for what this run produced: training stages, stage comparison, export formats."""
    from xoron_pipelines.training.schema import STAGES  # library data, no pipeline import

    tables = []
    order = [stage for group in STAGES.values() for stage in group]
    stages = [f"{stage}.train_summary" for stage in order if f"{stage}.train_summary" in outputs]
    if stages:
        table = Table(title="training stages")
        for header, _, _ in _TRAIN_COLUMNS:
            table.add_column(header, justify="left" if header == "stage" else "right")
        for name in stages:
            summary = load(name)
            table.add_row(*(_cell(summary, key, fmt) for _, key, fmt in _TRAIN_COLUMNS))
        tables.append(table)
    if "evaluation_comparison" in outputs:
        frame = load("evaluation_comparison")
        table = Table(title="evaluation by stage")
        stage_cols = [  # the value per column (untrained, stages); intervals and changes stay in the CSV / markdown
            c
            for c in frame.columns
            if c not in ("metric", "better", "n", "chance")
            and not c.startswith("delta_")
            and not c.endswith(("_lo", "_hi"))
        ]
        for col in ("metric", *stage_cols):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for _, row in frame.iterrows():
            table.add_row(str(row["metric"]), *(f"{row[c]:.4g}" for c in stage_cols))
        tables.append(table)
    if "export_manifest" in outputs:
        manifest = load("export_manifest")
        table = Table(title=f"export of stage {manifest.get('source')}")
        table.add_column("format")
        table.add_column("written")
        for fmt, info in manifest.get("formats", {}).items():
            entries = info if isinstance(info, list) else [info, *(v for v in info.values() if isinstance(v, dict))]
            paths = (e.get("path") or e.get("file") for e in entries)
            written = ", ".join(str(p) for p in paths if p)
            table.add_row(fmt, written or f"nothing: {info.get('reason', 'not produced')}")
        tables.append(table)
    return tables


class RunSummaryHook:
    """Print a short summary table at the end of ``kedro run`` (what was trained, evaluated, exported)."""

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        outputs = set(pipeline.all_outputs())
        try:
            tables = run_summary(outputs, catalog.load)
        except Exception as exc:  # a summary must never turn a finished run into a failure
            log.warning("no run summary: %s", exc)
            return
        console = Console(width=max(Console().width, 132))  # logs are often not a terminal (80 columns)
        for table in tables:
            console.print(table)
