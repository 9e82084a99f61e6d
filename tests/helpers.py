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
import shutil
from pathlib import Path
from typing import Any

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


def copy_project(dst: Path, src: Path = PROJECT_ROOT) -> Path:
    """Copy ``conf/`` and ``pyproject.toml`` of ``src`` to ``dst``; create empty data layers and
    an empty ``src/`` (the package itself is imported from the venv)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "conf", dst / "conf", dirs_exist_ok=True)
    shutil.copy2(src / "pyproject.toml", dst / "pyproject.toml")
    for layer in DATA_LAYERS:
        (dst / "data" / layer).mkdir(parents=True, exist_ok=True)
    # bootstrap_project() requires the source dir to exist; the package comes from the venv
    (dst / "src").mkdir(exist_ok=True)
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
    bootstrap_project(project_path)
    with contextlib.chdir(project_path):
        with KedroSession.create(
            project_path=project_path, env=env, runtime_params=nest(params or {})
        ) as session:
            return session.run(pipeline_name=pipeline_name)
