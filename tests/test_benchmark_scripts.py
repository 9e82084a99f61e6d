"""The benchmark scripts still run: each on tiny settings, in a subprocess, checked for the
structure of what it reports (never for timings or targets, which only mean something at full
size on a quiet machine; see benchmarks/RESULTS.md).

Nothing else imports these scripts, so an API change elsewhere broke them silently before
(train_stage.py after the stage node gained an input). benchmarks/embed.py is not run here: it
reads the synth pipeline's output from the project's data/ folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_no_script_shadows_an_installed_module():
    """``python benchmarks/x.py`` puts benchmarks/ first on sys.path, so a script named like an
    installed top-level module (``kernels`` once: transformers imports that package) replaces
    it in every library the script imports."""
    import importlib.util

    bench = str(BENCH)
    shadowed = []
    for script in sorted(BENCH.glob("*.py")):
        saved = sys.path[:]
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != bench]
        try:
            if importlib.util.find_spec(script.stem) is not None:
                shadowed.append(script.name)
        finally:
            sys.path[:] = saved
    assert not shadowed, f"benchmark scripts named like importable modules: {shadowed}"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("adamw", ["fused", "foreach"])
def test_train_step_reports_both_pairs(tmp_path, adamw):
    out = tmp_path / "ts.json"
    text = _run(
        "train_step.py",
        "--batch",
        "1",
        "--seq",
        "16",
        "--steps",
        "1",
        "--rounds",
        "2",
        "--threads",
        "1",
        "--adamw",
        adamw,
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert f"{adamw} AdamW" in text
    rows = {r["pair"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"dense", "moe_mla"}
    assert rows["dense"]["native"] == "LlamaForCausalLM"
    assert rows["moe_mla"]["native"] == "DeepseekV3ForCausalLM"
    for r in rows.values():
        assert all(_positive(r[k]) for k in ("ratio", "ratio_paired", "ratio_best"))
        assert all(len(v) == 2 for v in r["all_rounds"].values())


def test_train_stage_runs_the_stage_node_and_the_bare_loop(tmp_path):
    text = _run("train_stage.py", "--sizes", "nano", "--steps", "2", "--rounds", "1", cwd=tmp_path)
    header, row = text.strip().splitlines()[-2:]
    fields = dict(zip(header.split(" | "), row.split(" | ")))
    assert fields["size"] == "nano" and fields["steps"] == "2"
    assert float(fields["stage_tokens_per_s"]) > 0 and float(fields["bare_tokens_per_s"]) > 0


def test_fused_ce_reports_peak_memory(tmp_path):
    out = tmp_path / "f.json"
    _run("fused_ce.py", "--vocab", "512", "--tokens", "64", "--hidden", "32", "--json", str(out), cwd=tmp_path)
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"naive", "fused_torch"} <= set(rows)
    assert all(_positive(r["peak_bytes"]) for r in rows.values())


def test_kernels_smoke_runs_every_kernel(tmp_path):
    out = tmp_path / "k.json"
    _run("kernel_timings.py", "--smoke", "--json", str(out), cwd=tmp_path)
    names = {row["kernel"] for row in json.loads(out.read_text())["rows"]}
    assert {"rms_norm", "apply_rope", "swiglu", "fused_linear_ce", "router_topk", "quantize_int8"} <= names


def test_generate_reports_cache_bytes(tmp_path):
    out = tmp_path / "g.json"
    text = _run("generate.py", "--rounds", "1", "--prompt", "4", "--new", "4", "--json", str(out), cwd=tmp_path)
    assert "KV cache mla" in text
    result = json.loads(out.read_text())
    assert result["kv_cache"] and all(r["same_tokens"] for r in result["throughput"])


def test_preprocess_compares_against_run_clm(tmp_path):
    # A short work dir: the script points tempfile there, and the run_clm arm's multiprocessing
    # manager puts a Unix socket under it (paths over 107 bytes fail to bind).
    work = Path(tempfile.mkdtemp(prefix="xb-"))
    try:
        text = _run(
            "preprocess.py",
            "--copies",
            "1",
            "--scale",
            "1",
            "--skip-rss",
            "--repeats",
            "1",
            "--workdir",
            str(work),
            cwd=tmp_path,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert "ratio ours / run_clm" in text
