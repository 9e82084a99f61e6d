"""Test-wide settings: offline, no telemetry, Triton kernels interpreted on CPU."""

from __future__ import annotations

import os
from pathlib import Path

# Must be set before anything imports triton / huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist runs 2 workers on 2 cores: one OpenMP thread each, or they spin against each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# make `tests.helpers` importable however pytest is launched (tests/ has no __init__.py)
import sys  # noqa: E402

if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))


@pytest.fixture(autouse=True, scope="session")
def _mlflow_outside_the_repository(tmp_path_factory):
    """Stage functions called outside a kedro run (no kedro-mlflow config) log to MLflow's
    default store, ``./mlflow.db`` with artefacts in ``./mlruns``: the repository. Give the
    session a throw-away store instead (a copy of the migrated template, whose default
    experiment keeps its artefacts in the system temp dir), unless the caller chose one."""
    if "MLFLOW_TRACKING_URI" in os.environ:
        yield
        return
    import shutil

    from tests.helpers import _mlflow_template_db

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    shutil.copyfile(_mlflow_template_db(), db)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture()
def kedro_project(tmp_path: Path) -> Path:
    """A throw-away copy of the project (conf/, pyproject.toml, empty data layers) in
    ``tmp_path``; run pipelines in it with ``tests.helpers.run_pipeline(path, name, params)``."""
    from tests.helpers import copy_project

    return copy_project(tmp_path / "project")
