"""Library packages never import the Kedro wiring (``xoron_pipelines.pipelines``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "xoron_pipelines"
LIBRARY = ("data", "model", "kernels", "training", "evaluation", "export", "latent", "synth", "datasets", "tracking")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_library_packages_do_not_import_pipelines():
    files = [f for name in LIBRARY for f in [*(PACKAGE / name).rglob("*.py"), PACKAGE / f"{name}.py"] if f.is_file()]
    assert len(files) > 50
    upward = {
        f"{f.relative_to(PACKAGE)}: {m}"
        for f in files
        for m in _imports(f)
        if m == "xoron_pipelines.pipelines" or m.startswith("xoron_pipelines.pipelines.")
    }
    assert not upward
