"""Project hooks: parameter validation before any node (nodes receive the validated objects), a run
whose inputs are not produced yet refused before it starts, the data lock and staging area of a
run, the MLflow conventions (run name, experiment kind, artefact locations, runs of killed
processes closed), a short summary after a run."""

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
from xoron_pipelines.validation import parameter_files, validate_all

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
        # (and the conf files that set each group name where a bad value may come from)
        self._validated = validate_all(
            context.params, getattr(context, "_runtime_params", None), parameter_files(context.config_loader)
        )
        log.debug("validated parameter groups: %s", sorted(self._validated))

    @hook_impl
    def before_node_run(self, node, inputs: dict[str, Any]) -> dict[str, Any] | None:
        replaced = {name: validated_input(self._validated, name) for name in inputs if name.startswith("params:")}
        return {name: value for name, value in replaced.items() if value is not _NOT_VALIDATED} or None


def all_pipelines() -> dict[str, Any]:
    """Every pipeline package's ``create_pipeline()`` (``pipelines/<name>/pipeline.py``), whichever
    pipelines the run selected: during ``kedro run --pipeline X`` Kedro 1.x's ``find_pipelines``
    (so ``register_pipelines()``) loads only X."""
    import importlib

    from xoron_pipelines import pipelines

    root = Path(pipelines.__file__).parent
    names = sorted(p.parent.name for p in root.glob("*/pipeline.py"))
    return {
        name: importlib.import_module(f"xoron_pipelines.pipelines.{name}.pipeline").create_pipeline() for name in names
    }


class MissingInputsError(Exception):
    """Inputs of the selected pipeline that an earlier run must produce first (see
    :class:`MissingInputsHook`); the message is the paragraph shown to the user."""


def producers(name: str, pipelines: Mapping[str, Any]) -> list[str]:
    """The registered pipelines that write dataset ``name``, those of the default run first (in
    its order), then the others by name; ``__default__`` itself is never named."""
    found = [key for key, pipe in pipelines.items() if key != "__default__" and name in pipe.all_outputs()]
    return sorted(found, key=producers_order)


def producers_order(name: str) -> tuple[int, str]:
    """Sort key of pipeline names: those of the default run in its order, then the others by name."""
    from xoron_pipelines.pipeline_registry import DEFAULT_ORDER  # see _registry_note

    return (DEFAULT_ORDER.index(name) if name in DEFAULT_ORDER else len(DEFAULT_ORDER), name)


def _file_backed(dataset: Any) -> bool:
    """A dataset stored in files, whose own ``_exists`` tells whether it is there (not a
    MemoryDataset, not a dataset that cannot tell)."""
    from kedro.io import AbstractDataset, MemoryDataset

    if dataset is None or isinstance(dataset, MemoryDataset):
        return False
    return type(dataset)._exists is not AbstractDataset._exists


def _optional(dataset: Any) -> bool:
    """A catalog entry marked ``metadata: {xoron: {optional_input: true}}``: its readers do
    without it (the check leaves it alone)."""
    metadata = getattr(dataset, "metadata", None) or {}
    return bool((metadata.get("xoron") or {}).get("optional_input"))


def _exists(dataset: Any) -> bool:
    """Whether the dataset is there; a dataset that cannot tell counts as there (its node reports)."""
    try:
        return dataset.exists()
    except Exception:
        return True


def _location(dataset: Any, project: Path | None) -> str:
    """Where ``dataset`` lives, relative to the project when under it (from its description)."""
    described = dataset._describe()
    inner = described.get("dataset")
    where = (
        described.get("filepath")
        or described.get("path")
        or (inner.get("filepath") if isinstance(inner, dict) else None)
    )
    if not where:
        return ""
    path = Path(str(where).removeprefix("file://"))
    if project is not None and path.is_absolute() and path.is_relative_to(project):
        path = path.relative_to(project)
    return str(path)


def missing_inputs_message(selected: list[str], missing: Mapping[str, str], pipelines: Mapping[str, Any]) -> str:
    """One paragraph: which inputs of the pipelines ``selected`` are missing (name -> location),
    which pipeline produces each, and the command to run first."""
    what = "default" if selected in ([], ["__default__"]) else "+".join(selected)
    by_producer: dict[str, list[str]] = {}
    for name, where in missing.items():
        found = producers(name, pipelines)
        entry = f"{name} ({where})" if where else name
        by_producer.setdefault(found[0] if found else "", []).append(entry)
    parts = []
    for producer, entries in by_producer.items():
        names = ", ".join(entries[:-1]) + (" and " if len(entries) > 1 else "") + entries[-1]
        produced = (
            f"which the {producer} pipeline produces"
            if producer
            else "which no pipeline produces (see conf/base/catalog.yml)"
        )
        parts.append(f"{names}, {produced}")
    first = sorted((producer for producer in by_producer if producer), key=producers_order)
    run_first = ""
    if first:
        option = f"--pipelines {','.join(first)}"  # Kedro 1.x deprecates --pipeline
        run_first = f"; run `kedro run {option}` first (or `kedro run` for everything)"
    return f"The {what} pipeline needs {'; '.join(parts)}{run_first}."


class MissingInputsHook:
    """Stop a run before it starts when the selected pipeline reads datasets that an earlier run
    has not produced yet (``kedro run --pipeline evaluation`` before training), with one
    paragraph naming each missing dataset, its location, the pipeline that produces it and the
    command to run first (:class:`MissingInputsError`, shown short by ``cli.py``).

    Checked: the free inputs of the pipeline Kedro is about to run (after ``--nodes``,
    ``--from-nodes``, ``--namespaces``... filtering) that a registered pipeline produces and that
    are stored in files (the dataset implements ``_exists``), each mapped to the pipeline package
    that produces it (:func:`all_pipelines`). Inputs no pipeline produces (the
    raw sources, checkpoint stores), in-memory datasets and entries marked
    ``metadata: {xoron: {optional_input: true}}`` (read when present) are left to the nodes. Runs first of
    all ``before_pipeline_run`` hooks (``tryfirst`` and registered after :class:`DataLockHook`), so
    a refused run takes no lock and opens no MLflow run."""

    def __init__(self) -> None:
        self._project: Path | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project = Path(context.project_path).resolve()

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        registered = all_pipelines()
        produced = {name for key, pipe in registered.items() if key != "__default__" for name in pipe.all_outputs()}
        missing = {}
        for name in sorted(pipeline.inputs()):
            if name.startswith("params:") or name == "parameters" or name not in produced:
                continue
            dataset = catalog.get(name)
            if _file_backed(dataset) and not _optional(dataset) and not _exists(dataset):
                missing[name] = _location(dataset, self._project)
        if missing:
            selected = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
            raise MissingInputsError(missing_inputs_message(list(selected), missing, registered))


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
    """Name the ``kedro run``'s MLflow run after what was run (``pretrain``,
    ``data_processing+pretrain``, ``default``; kedro-mlflow's name is the pipelines joined by ``+``,
    ``__default__`` for the default run; a ``run.name`` set in mlflow.yml is kept), tag it with its
    process, tag the experiment as model training (``mlflow.experimentKind``; mlflow.yml sets it
    on a new experiment, this on one created before), and end as KILLED the runs that a killed
    earlier process left RUNNING (see :func:`xoron_pipelines.tracking.mark_dead_runs`).

    When the context is created (kedro-mlflow has set the tracking URI, no run is open yet), a
    project that was moved gets its MLflow artefact locations pointed at its own ``mlruns/``
    again (:func:`xoron_pipelines.tracking.relocate_artifacts`), so earlier runs' artefacts
    resolve and this run's go there.

    kedro-mlflow (a plugin, so its hooks run before the project's) has opened the run by then;
    without an active run (tracking disabled) there is nothing to do."""

    @hook_impl
    def after_context_created(self, context) -> None:
        from xoron_pipelines.tracking import relocate_artifacts

        try:
            relocate_artifacts(Path(context.project_path))
        except Exception as exc:  # never stop a run for the links of earlier ones
            log.warning("could not point the MLflow artefact locations at this project's mlruns/: %s", exc)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        from xoron_pipelines import tracking

        try:
            run = tracking.active_run()
            if run is None:
                return
            names = run_params.get("pipeline_names") or ["__default__"]
            tracking.rename_active_run(tracking.run_name(names), unless_named="+".join(names))
            tracking.tag_active_run(tracking.process_tags())
            tracking.tag_experiment_kind(run.info.experiment_id)
            tracking.mark_dead_runs([run.info.experiment_id], keep={run.info.run_id})
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
        from xoron_pipelines.evaluation.report import stage_columns

        frame = load("evaluation_comparison")
        table = Table(title="evaluation by stage")
        stage_cols = stage_columns(frame)  # values per column (untrained, stages); intervals stay in the CSV / markdown
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
