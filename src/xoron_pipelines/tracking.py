"""MLflow helpers of the training stages: one nested run per stage under the ``kedro run`` run.

kedro-mlflow opens the parent run (``conf/local/mlflow.yml``: sqlite ``mlflow.db``, ``nested:
true``) and re-activates it before every node, so inside a node :func:`stage_run` opens the
stage's run as its child (``mlflow.parentRunId`` tag). Outside Kedro (a notebook, a script)
the stage run is a top-level run of the active experiment.

:class:`StageRecorder` keeps the metric history of a stage in memory (for the plots and the
summary) and, when tracking is on, logs every record to MLflow with its step. Plots are drawn
with matplotlib's non-interactive ``Agg`` backend: :func:`loss_curve_figure` (train loss and
eval loss against the optimizer step) and :func:`expert_load_figure` (per MoE layer: the share
of routed tokens of each expert; per PEER layer: the hot-expert count).

Runs left RUNNING by a killed process: every run this project opens carries the process that
owns it (:func:`process_tags`: pid, host, the pid's start time), and at the start of each
``kedro run`` :func:`mark_dead_runs` ends as KILLED the RUNNING runs of the experiment whose
process on this host is gone (or whose pid now belongs to another process). A run of a live
process, of another host, or without these tags is never touched.

Every MLflow write of the project goes through this module (nodes and library code do not import
mlflow to write): :func:`stage_run`, :func:`log_params`, :class:`StageRecorder`,
:func:`log_figure`, :func:`log_saved`, :func:`log_dict` and :func:`tag_active_run` write to the
active run; :func:`log_metrics_to_run` to a given earlier run (evaluation into a stage's training
run); :func:`register_pyfunc_model` logs and registers a pyfunc model (export);
:func:`mark_dead_runs` ends runs of killed processes; :func:`tag_experiment_kind`,
:func:`rename_active_run` and :func:`relocate_artifacts` keep the experiment, the run names and
the artefact locations as a user expects them (see :class:`xoron_pipelines.hooks.StaleRunsHook`).
Stage runs sample MLflow's system metrics (:func:`stage_run`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: MLflow accepts at most this many params per batch call
_PARAMS_PER_CALL = 100
_MAX_PARAM_CHARS = 6000


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": "[1, 2]"}`` (lists kept as strings)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


@contextlib.contextmanager
def stage_run(
    stage: str,
    enabled: bool = True,
    tags: Mapping[str, str] | None = None,
    system_metrics_interval: float | None = None,
) -> Iterator[Any]:
    """Open the stage's MLflow run (nested under the active run, if any) for the ``with`` body;
    yields the run (None when disabled). The run ends FAILED when the body raises.
    ``system_metrics_interval``: sample MLflow's system metrics (``system/cpu_utilization_percentage``,
    ``system/system_memory_usage_megabytes``, disk, network, ``system/gpu_*`` with nvidia-ml-py)
    every that many seconds while the run is open; None: none."""
    if not enabled:
        yield None
        return
    import mlflow

    parent = mlflow.active_run()
    if system_metrics_interval is not None:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval)
        # its start / stop / "no GPU" INFO lines, four per stage, on stderr: not news
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    run = mlflow.start_run(
        run_name=stage,
        nested=parent is not None,
        tags={"xoron.stage": stage, **process_tags(), **(tags or {})},
        log_system_metrics=system_metrics_interval is not None,
    )
    status = "FINISHED"
    try:
        yield run
    except BaseException:
        status = "FAILED"
        raise
    finally:
        mlflow.end_run(status)


PID_TAG, HOST_TAG, PID_START_TAG = "xoron.pid", "xoron.host", "xoron.pid_start"


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, /proc/<pid>/stat), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces


def process_tags(pid: int | None = None) -> dict[str, str]:
    """Tags naming the process that owns a run: pid, host, and the pid's start time (so a
    reused pid is not mistaken for the owner)."""
    pid = os.getpid() if pid is None else pid
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), PID_START_TAG: _process_start(pid) or ""}


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process recorded in a run's tags still runs: None when it cannot be told
    (no pid tag, or another host), False when the pid is gone or now another process's."""
    pid = tags.get(PID_TAG, "")
    if not pid.isdigit() or tags.get(HOST_TAG) != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    started = tags.get(PID_START_TAG)
    now = _process_start(int(pid))
    return not (started and now and started != now)


def mark_dead_runs(experiment_ids: list[str], keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """End as KILLED every RUNNING run of ``experiment_ids`` (but ``keep``) whose owning process
    is gone (see :func:`owner_alive`); returns their run ids, each logged with its process."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    dead = []
    for run in client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=10_000):
        tags = run.data.tags
        if run.info.run_id in keep or owner_alive(tags) is not False:
            continue
        client.set_terminated(run.info.run_id, status="KILLED")
        dead.append(run.info.run_id)
        log.warning(
            "MLflow run %s (%s) was left RUNNING by process %s on %s, which is gone: marked KILLED",
            run.info.run_id,
            run.info.run_name,
            tags.get(PID_TAG),
            tags.get(HOST_TAG),
        )
    return dead


#: MLflow 3's experiment type tag; ``custom_model_development`` opens the UI on the runs and their
#: metrics (model training), ``genai_development`` on traces (what MLflow guesses without the tag)
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def tag_experiment_kind(experiment_id: str) -> bool:
    """Tag the experiment as model training (:data:`EXPERIMENT_KIND_TAG`) unless it has a kind
    already (a user's choice in the UI is kept); True when the tag was set."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if EXPERIMENT_KIND_TAG in client.get_experiment(experiment_id).tags:
        return False
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return True


def run_name(pipeline_names: list[str] | None) -> str:
    """The name of a ``kedro run``'s MLflow run: the pipelines run, joined by ``+``
    (``data_processing+pretrain``), ``default`` for the default pipeline."""
    names = [name.removeprefix("__").removesuffix("__") for name in pipeline_names or ["__default__"]]
    return "+".join(names)


def rename_active_run(name: str, unless_named: str | None = None) -> bool:
    """Rename the active run to ``name`` (when its name is ``unless_named``, if given: a name the
    user configured is kept); True when renamed."""
    import mlflow
    from mlflow.tracking import MlflowClient

    run = mlflow.active_run()
    if run is None or (unless_named is not None and run.info.run_name != unless_named):
        return False
    MlflowClient().update_run(run.info.run_id, name=name)
    return True


#: where artefacts live, relative to the project: MLflow's default artifact root (``./mlruns``) of
#: the experiments kedro-mlflow creates from the project directory
ARTIFACT_DIR = "mlruns"

#: the tracking store's columns that hold artefact locations (table, column)
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def _local_path(location: str) -> str:
    return location.removeprefix("file://")


def relocate_artifacts(project: Path, tracking_uri: str | None = None) -> str | None:
    """Point the tracking store's artefact locations at ``<project>/mlruns`` when they name the
    ``mlruns`` directory of the project's earlier place (the project was moved or copied), so the
    runs' artefacts resolve again; returns the old root, or None when nothing was to do.

    MLflow stores artefact locations as absolute paths (a relative one is resolved when the
    experiment is created), and has no call to change them: for the local SQLite store of
    ``conf/local/mlflow.yml`` the rows are rewritten in one transaction (experiments, runs, logged
    models, model versions; plain paths and ``file://`` URIs alike). Other stores (a tracking
    server) own their artefact locations and are left alone."""
    import mlflow
    import sqlalchemy

    uri = tracking_uri or mlflow.get_tracking_uri()
    new_root = (Path(project).resolve() / ARTIFACT_DIR).as_posix()
    if not uri.startswith("sqlite:") or not Path(new_root).is_dir():
        return None
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as db:
            locations = [
                _local_path(row[0]).rstrip("/") + "/"
                for row in db.execute(sqlalchemy.text("SELECT artifact_location FROM experiments"))
            ]
            old_roots = {
                loc[: loc.rindex(f"/{ARTIFACT_DIR}/") + len(ARTIFACT_DIR) + 1]
                for loc in locations
                if f"/{ARTIFACT_DIR}/" in loc
            }
            old_roots.discard(new_root)
            if len(old_roots) != 1:  # nothing moved, or several earlier places: not a move of this project
                return None
            (old_root,) = old_roots
            for table, column in _ARTIFACT_COLUMNS:
                for prefix in (old_root, f"file://{old_root}"):
                    db.execute(
                        sqlalchemy.text(
                            f"UPDATE {table} SET {column} = :new || substr({column}, :cut) "  # noqa: S608 (fixed names)
                            f"WHERE {column} = :old OR {column} LIKE :old_dir ESCAPE '\\'"
                        ),
                        {
                            "new": prefix.replace(old_root, new_root),
                            "cut": len(prefix) + 1,
                            "old": prefix,
                            "old_dir": prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%",
                        },
                    )
    finally:
        engine.dispose()
    log.info("the project moved: MLflow artefact locations under %s now point to %s", old_root, new_root)
    return old_root


def log_params(params: Mapping[str, Any]) -> None:
    """Log flattened parameters in batches (values cut to MLflow's length limit)."""
    import mlflow

    items = [(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in flatten(params).items()]
    for i in range(0, len(items), _PARAMS_PER_CALL):
        mlflow.log_params(dict(items[i : i + _PARAMS_PER_CALL]))


class StageRecorder:
    """History of a stage's metrics (``[{"step": s, name: value, ...}]``), mirrored to MLflow."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.history: list[dict[str, float]] = []

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self.history.append({"step": float(step), **clean})
        if self.enabled and clean:
            import mlflow

            mlflow.log_metrics(clean, step=int(step))

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one metric."""
        rows = [r for r in self.history if name in r]
        return [r["step"] for r in rows], [r[name] for r in rows]

    def names(self, prefix: str) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.history:
            for key in row:
                if key.startswith(prefix):
                    seen[key] = None
        return list(seen)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def loss_curve_figure(recorder: StageRecorder, title: str):
    """Train loss (and eval loss, when evaluated) against the optimizer step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("loss", "-"), ("eval_loss", "o--")):
        steps, values = recorder.series(name)
        if steps:
            ax.plot(steps, values, style, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    return fig


def expert_load_figure(recorder: StageRecorder, title: str):
    """Per MoE layer the routed-token share of each expert over the steps, and the PEER layers'
    hot-expert counts; None when the model has neither (a dense model)."""
    moe = recorder.names("moe/")
    loads = sorted({name.rsplit("/", 1)[0] for name in moe if "/expert" in name})
    peer = [name for name in recorder.names("peer/") if name.endswith("hot_experts")]
    panels = len(loads) + (1 if peer else 0)
    if panels == 0:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(panels, 1, figsize=(6, 2.6 * panels), squeeze=False)
    for ax, layer in zip(axes[:, 0], loads):
        for name in [n for n in moe if n.startswith(f"{layer}/expert")]:
            steps, values = recorder.series(name)
            ax.plot(steps, values, label=name.rsplit("/", 1)[1])
        ax.set_title(f"{title}: {layer} routed-token share")
        ax.set_ylabel("share")
        ax.legend(fontsize="x-small", ncol=4)
    if peer:
        ax = axes[-1, 0]
        for name in peer:
            steps, values = recorder.series(name)
            ax.plot(steps, values, label=name.split("/")[1])
        ax.set_title(f"{title}: PEER hot experts")
        ax.legend(fontsize="x-small")
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def log_figure(fig, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artefact and close it."""
    import mlflow

    plt = _pyplot()
    try:
        mlflow.log_figure(fig, artifact_file)
    finally:
        plt.close(fig)


def log_saved(obj: Any, artifact_path: str) -> None:
    """``obj.save_pretrained(tmp)`` (a model or tokenizer) and log the directory as artefacts."""
    import mlflow

    from xoron_pipelines.atomic import default_permissions

    with tempfile.TemporaryDirectory(prefix="xoron-artifact-") as tmp:
        obj.save_pretrained(str(Path(tmp)))
        default_permissions(tmp, recursive=True)  # a local artifact store copies the modes (safetensors: 0600)
        mlflow.log_artifacts(tmp, artifact_path)


def active_run() -> Any:
    """The active MLflow run (kedro-mlflow's during ``kedro run``, a stage's inside
    :func:`stage_run`), or None."""
    import mlflow

    return mlflow.active_run()


def tag_active_run(tags: Mapping[str, str]) -> bool:
    """Set ``tags`` on the active run; False (nothing written) when no run is active."""
    import mlflow

    if mlflow.active_run() is None:
        return False
    mlflow.set_tags(dict(tags))
    return True


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Log ``data`` as a JSON (or YAML, by extension) artefact of the active run."""
    import mlflow

    mlflow.log_dict(dict(data), artifact_file)


class RunNotFound(LookupError):
    """The tracking store has no run of the given id; ``error_code`` is MLflow's reason."""

    def __init__(self, run_id: str, error_code: str) -> None:
        super().__init__(f"MLflow run {run_id} is not in the tracking store ({error_code})")
        self.run_id, self.error_code = run_id, error_code


#: MLflow accepts at most this many metrics per batch call
_METRICS_PER_CALL = 1000


def log_metrics_to_run(run_id: str, metrics: Mapping[str, float], step: int = 0) -> int:
    """Log ``metrics`` at ``step`` into the existing run ``run_id`` (not the active run), in
    batches of MLflow's per-call limit; returns how many were logged. Raises :class:`RunNotFound`
    (before writing anything) when the store has no such run."""
    import time

    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.get_run(run_id)
    except MlflowException as err:
        raise RunNotFound(run_id, err.error_code) from err
    now = int(time.time() * 1000)
    batch = [Metric(name, float(value), now, step) for name, value in metrics.items()]
    for i in range(0, len(batch), _METRICS_PER_CALL):
        client.log_batch(run_id, metrics=batch[i : i + _METRICS_PER_CALL])
    return len(batch)


def register_pyfunc_model(
    python_model: Any,
    artifacts: Mapping[str, str],
    registered_model_name: str,
    artifact_name: str = "model",
    pip_requirements: list[str] | None = None,
) -> dict[str, Any]:
    """Log ``python_model`` (an ``mlflow.pyfunc.PythonModel``) with ``artifacts`` to the active run
    (a new run, ended afterwards, when none is active) and register it as a new version of
    ``registered_model_name``. Returns run_id, model_uri, registered_model_name and version."""
    import mlflow
    import mlflow.pyfunc

    own_run = mlflow.active_run() is None
    run = mlflow.start_run(tags=process_tags()) if own_run else mlflow.active_run()
    try:
        info = mlflow.pyfunc.log_model(
            name=artifact_name,
            python_model=python_model,
            artifacts=dict(artifacts),
            registered_model_name=registered_model_name,
            pip_requirements=pip_requirements,
        )
    finally:
        if own_run:
            mlflow.end_run()
    log.info(
        "registered %s (version %s) from run %s", registered_model_name, info.registered_model_version, run.info.run_id
    )
    return {
        "run_id": run.info.run_id,
        "model_uri": info.model_uri,
        "registered_model_name": registered_model_name,
        "version": info.registered_model_version,
    }


def log_bytes(data: bytes, artifact_file: str) -> None:
    """Log ``data`` (a WAV clip, an image) as the artefact ``artifact_file`` of the active run."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="xoron-artifact-") as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_bytes(data)
        parent = str(Path(artifact_file).parent)
        mlflow.log_artifact(str(path), None if parent in ("", ".") else parent)
