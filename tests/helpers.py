"""Reusable test helpers: run a Kedro pipeline on a throw-away copy of the project.

``copy_project(dst)`` makes a minimal project at ``dst`` (``conf/``, ``pyproject.toml``, the
empty ``data/0x_*`` layers and an empty ``src/``; the package itself is imported from the venv), and
``run_pipeline(project_path, name, params)`` runs one pipeline there through a real
``KedroSession``, so the catalog, the parameter validation hook and kedro-mlflow are exercised
exactly as by ``kedro run``. The ``kedro_project`` fixture in ``conftest.py`` wraps
``copy_project`` for a per-test copy; use ``copy_project`` with ``tmp_path_factory`` for a
module-scoped one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DATA_LAYERS = (
    "01_raw",
    "02_intermediate",
    "03_primary",
    "04_feature",
    "05_model_input",
    "06_models",
    "07_model_output",
    "08_reporting",
)


def _mlflow_template_db() -> Path:
    """An empty, fully migrated MLflow sqlite database, built once per machine and MLflow
    version in the system temp dir (running MLflow's migrations takes ~8 s; copying, ~1 ms)."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = Path(tempfile.gettempdir()) / f"xoron-tests-mlflow-{mlflow.__version__}.db"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        store = SqlAlchemyStore(f"sqlite:///{tmp}", str(tmp.parent / "xoron-tests-mlartifacts"))
        store.engine.dispose()
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def fresh_tracking_store(tmp_path: Path):
    """A fresh MLflow tracking store (a copy of the migrated template in ``tmp_path``) as the
    current one; yields an ``MlflowClient`` on it; the previous tracking URI is restored after."""
    import mlflow
    from mlflow.tracking import MlflowClient, fluent

    db = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_template_db(), db)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{db}")

    # an in-process kedro run of an earlier test leaves its experiment active (mlflow.set_experiment
    # keeps the id process-wide and in MLFLOW_EXPERIMENT_ID); that id means nothing in this store:
    # start from the default experiment, and leave none behind
    def forget_experiment() -> None:
        fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)

    forget_experiment()
    try:
        yield MlflowClient()
    finally:
        forget_experiment()
        mlflow.set_tracking_uri(previous)


def _isolate_mlflow(dst: Path) -> None:
    """Give the copy its own tracking database: a copy of the migrated template, addressed by
    an absolute URI (MLflow caches stores by URI, so the relative ``sqlite:///mlflow.db`` of
    every copy would share the first copy's database)."""
    mlflow_yml = dst / "conf" / "local" / "mlflow.yml"
    if not mlflow_yml.exists():
        return
    config = yaml.safe_load(mlflow_yml.read_text()) or {}
    db = dst / "mlflow.db"
    shutil.copyfile(_mlflow_template_db(), db)
    config.setdefault("server", {})["mlflow_tracking_uri"] = f"sqlite:///{db}"
    mlflow_yml.write_text(yaml.safe_dump(config, sort_keys=False))


def copy_project(dst: Path, src: Path = PROJECT_ROOT) -> Path:
    """Copy ``conf/`` and ``pyproject.toml`` of ``src`` to ``dst``; create empty data layers,
    an empty ``src/`` (the package itself is imported from the venv) and the copy's own
    ``mlflow.db`` (conf/local/mlflow.yml is rewritten to point at it by absolute path)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "conf", dst / "conf", dirs_exist_ok=True)
    shutil.copy2(src / "pyproject.toml", dst / "pyproject.toml")
    for layer in DATA_LAYERS:
        (dst / "data" / layer).mkdir(parents=True, exist_ok=True)
    # bootstrap_project() requires the source dir to exist; the package comes from the venv
    (dst / "src").mkdir(exist_ok=True)
    _isolate_mlflow(dst)
    return dst


def nest(params: dict[str, Any]) -> dict[str, Any]:
    """``{"synth.counts.fim": 3}`` -> ``{"synth": {"counts": {"fim": 3}}}`` (nested dicts kept)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return out


#: the synth media corpus of a test run that names no ``synth.media`` (the defaults take ~15 s)
TEST_SYNTH_MEDIA = {
    "image": {"counts": {"train": 8, "heldout": 4}},
    "video": {"counts": {"train": 8, "heldout": 4}},
    "audio": {"counts": {"train": 8, "heldout": 4}},
    "progress": False,
}


def run_pipeline(
    project_path: Path,
    pipeline_name: str,
    params: dict[str, Any] | None = None,
    env: str | None = None,
) -> dict[str, Any]:
    """Run ``pipeline_name`` in the project at ``project_path`` with a real ``KedroSession``.

    ``params`` are runtime parameters, as with ``kedro run --params``; keys may be dotted
    (``"synth.counts.fim": 3``) or nested dicts, and are merged into the group's YAML values.
    Runs with ``project_path`` as the working directory (catalog paths and the MLflow
    ``sqlite:///mlflow.db`` are relative to it). Returns the session's free outputs.
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project_path = Path(project_path).resolve()
    runtime = nest(params or {})
    if "media" not in runtime.get("synth", {}):  # keep synth fast where a test does not ask for media
        runtime.setdefault("synth", {})["media"] = TEST_SYNTH_MEDIA
    bootstrap_project(project_path)
    try:
        with contextlib.chdir(project_path):
            with KedroSession.create(project_path=project_path, env=env, runtime_params=runtime) as session:
                return session.run(pipeline_name=pipeline_name)
    finally:
        _end_mlflow_runs()


def _end_mlflow_runs() -> None:
    """Close every MLflow run left on this process's run stack.

    With ``run.nested: true`` in mlflow.yml, kedro-mlflow re-opens the pipeline's run in
    ``before_node_run`` as a nested copy and closes only one copy after the pipeline, so the
    run stays active; a second session in the same process would then log into it.
    """
    import sys

    mlflow = sys.modules.get("mlflow")
    while mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run()
