"""benchmarks/gpu_check.py, the one-command GPU acceptance check, cannot rot on a CPU-only CI:
its ``--dry-run`` runs every section's code on tiny CPU shapes (Triton through the interpreter)
and must report every section with finite figures, without touching RESULTS.md. The GPU
figures themselves only come from a GPU run; nothing here pretends to test CUDA."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SECTIONS = ["kernel_parity", "kernel_timings", "fused_ce_memory", "train_step", "kedro_pretrain", "kernel_tests"]
KERNELS = {"rms_norm", "apply_rope", "swiglu", "fused_linear_ce", "router_topk", "quantize_int8"}


def _run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture()
def gpu_check():
    """The script as a module (benchmarks/ is put on sys.path by it; restored afterwards)."""
    saved = sys.path[:]
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path[:] = saved


@pytest.mark.slow
def test_dry_run_reports_every_section(tmp_path):
    results_md = BENCH / "RESULTS.md"
    before = hashlib.sha256(results_md.read_bytes()).hexdigest()
    out = tmp_path / "g.json"
    proc = _run("--dry-run", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert hashlib.sha256(results_md.read_bytes()).hexdigest() == before, "a dry run must not touch RESULTS.md"
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["checks_ok"] is True
    s = report["sections"]
    assert list(s) == SECTIONS
    for name in SECTIONS:
        assert s[name]["status"] in {"ok", "skipped"}, (name, s[name])
        assert s[name]["seconds"] >= 0 and s[name]["budget_s"] > 0
    for name in ("kernel_parity", "kernel_timings", "fused_ce_memory", "train_step"):
        assert s[name]["status"] == "ok", (name, s[name])

    # (1) every kernel in fp32 (interpreted Triton vs torch) and bf16, each within tolerance
    parity = {(r["kernel"], r["dtype"]): r for r in s["kernel_parity"]["rows"]}
    assert set(parity) == {(k, d) for k in KERNELS for d in ("float32", "bfloat16")}
    assert all(r["ok"] for r in parity.values())
    assert all(parity[(k, "float32")]["candidate"] == "triton" for k in KERNELS)
    assert all(parity[(k, "float32")]["backward"] for k in KERNELS - {"quantize_int8"})
    # (2) timings: Triton against eager and torch.compile, finite ratios for every kernel
    ratios = {r["kernel"]: r for r in s["kernel_timings"]["ratios"]}
    assert set(ratios) == KERNELS
    for r in ratios.values():
        assert all(_finite_positive(r[k]) for k in ("vs_eager_fwd", "vs_compile_fwd"))
    assert all(_finite_positive(ratios[k]["vs_compile_fwd_bwd"]) for k in KERNELS - {"quantize_int8"})
    # fused CE memory against the naive path, each variant in its own process
    mem = s["fused_ce_memory"]
    assert {r["variant"] for r in mem["rows"]} == {"naive", "fused_torch"}
    assert _finite_positive(mem["ours_vs_naive_peak"])  # tiny shapes: no saving to see here
    # (3) train step: both pairs against their native classes, bf16, MFU from the peak
    pairs = {p["pair"]: p for p in s["train_step"]["pairs"]}
    assert pairs["dense"]["native"] == "LlamaForCausalLM"
    assert pairs["moe_mla"]["native"] == "DeepseekV3ForCausalLM"
    for p in pairs.values():
        assert _finite_positive(p["ratio"]) and _finite_positive(p["active_params"])
        assert all(_finite_positive(v) for v in p["mfu"].values())
        tps = p["tokens_per_s"]["xoron"]
        assert p["mfu"]["xoron"] == pytest.approx(6 * p["active_params"] * tps / s["train_step"]["peak_flops"])
    # (4) the kedro commands are planned (run on a GPU, or with --with-kedro)
    assert any("--pipeline pretrain" in c for c in s["kedro_pretrain"]["commands"])

    targets = {t["target"]: t for t in report["targets"]}
    assert len(targets) == 5 and all(t["result"] in {"PASS", "MISS", "N/A"} for t in targets.values())
    assert targets["dense bf16 MFU >= 40%"]["value"] == pairs["dense"]["mfu"]["xoron"]
    assert "| target | value | threshold | result |" in out.with_suffix(".md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_gpu_and_without_dry_run_it_refuses(tmp_path):
    proc = _run("--out", str(tmp_path / "g.json"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "g.json").exists()


def test_results_section_is_replaced_between_the_markers(gpu_check):
    results = (BENCH / "RESULTS.md").read_text()
    assert gpu_check.MARK_BEGIN in results and gpu_check.MARK_END in results  # a run replaces, not appends
    doc = f"# R\n\nbefore\n{gpu_check.MARK_BEGIN}\nold figures\n{gpu_check.MARK_END}\nafter\n"
    once = gpu_check.splice_results(doc, "new figures")
    assert once == f"# R\n\nbefore\n{gpu_check.MARK_BEGIN}\nnew figures\n{gpu_check.MARK_END}\nafter\n"
    assert gpu_check.splice_results(once, "newer") == once.replace("new figures", "newer")
    appended = gpu_check.splice_results("# R\n", "figures")
    assert appended.startswith("# R\n") and appended.count(gpu_check.MARK_BEGIN) == 1
    assert "figures\n" + gpu_check.MARK_END in appended


def test_device_lines_of_a_kedro_log(gpu_check):
    log = (
        "INFO Running node: train_language\n"
        "INFO stage language: device cuda:0, precision bf16, kernels triton\n"
        "INFO Loading data from packed_train\n"
        "INFO evaluation on Device: CUDA\n"
    )
    lines = gpu_check.device_lines(log)
    assert lines == [
        "INFO stage language: device cuda:0, precision bf16, kernels triton",
        "INFO evaluation on Device: CUDA",
    ]
    assert gpu_check.devices_named(lines) == ["cuda:0", "cuda"]
    assert gpu_check.devices_named(["device cpu (no GPU visible)"]) == ["cpu"]
    assert gpu_check.devices_named(gpu_check.device_lines("no such line")) == []


def test_targets_pass_miss_and_not_measured(gpu_check):
    def pair(name, native, ratio, mfu):
        return {"pair": name, "native": native, "ratio": ratio, "mfu": {"xoron": mfu, native: mfu / ratio}}

    sections = {
        "train_step": {
            "pairs": [pair("dense", "LlamaForCausalLM", 1.25, 0.45), pair("moe_mla", "DeepseekV3", 1.1, 0.2)]
        },
        "fused_ce_memory": {"ours_vs_liger_peak": 0.8},
        "kernel_timings": {"ratios": [{"kernel": "fused_linear_ce", "vs_liger_fwd_bwd": 0.9}]},
    }
    got = {t["target"]: t["result"] for t in gpu_check.evaluate_targets(sections)}
    assert got == {
        "dense bf16 MFU >= 40%": "PASS",
        "dense train step >= 1.2x LlamaForCausalLM": "PASS",
        "moe_mla train step >= 1.2x DeepseekV3": "MISS",
        "fused CE peak memory <= Liger": "PASS",
        "fused CE fwd+bwd speed >= Liger": "MISS",
    }
    sections["train_step"]["pairs"][0]["mfu"]["xoron"] = None  # GPU not in the peak table
    del sections["fused_ce_memory"]["ours_vs_liger_peak"]  # Liger not installed
    got = {t["target"]: t["result"] for t in gpu_check.evaluate_targets(sections)}
    assert got["dense bf16 MFU >= 40%"] == "N/A" and got["fused CE peak memory <= Liger"] == "N/A"


def test_peak_flops_table_prefers_the_specific_name(gpu_check):
    assert gpu_check.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.5e12
    assert gpu_check.peak_bf16_flops("NVIDIA H100 PCIe") == 756.5e12
    assert gpu_check.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.peak_bf16_flops("NVIDIA A10G") == 125e12
    assert gpu_check.peak_bf16_flops("Some Future GPU") is None


def test_parity_criterion_catches_a_wrong_kernel(gpu_check):
    """Relative to the float64 result: within 2x the reference's own error (or the dtype's floor)
    passes, a perturbation beyond it fails; the exact kernels need bit-for-bit equality."""
    gold = torch.linspace(-4, 4, 101, dtype=torch.float64)
    ref = gold.bfloat16()  # the torch reference at bf16: rounding error only
    close = (gold + 0.01).bfloat16()  # within the 1e-2 floor (relative to max |gold| = 4)
    wrong = (gold * 1.05).bfloat16()  # 5% off
    assert gpu_check._compare("swiglu", "bfloat16", [close], [ref], [gold])["ok"]
    row = gpu_check._compare("swiglu", "bfloat16", [wrong], [ref], [gold])
    assert not row["ok"] and row["max_rel_err"] > 2 * row["torch_max_rel_err"]
    assert not gpu_check._compare("rms_norm", "float32", [gold.float() + 1e-3], [gold.float()], [gold])["ok"]
    assert not gpu_check._compare("swiglu", "float32", [gold.float()[:-1]], [gold.float()], [gold])["ok"]
    idx = torch.tensor([[0, 2]])
    assert gpu_check._compare("router_topk", "float32", [idx], [idx.clone()], [idx])["ok"]
    assert not gpu_check._compare("router_topk", "float32", [idx], [torch.tensor([[2, 0]])], [idx])["ok"]


def test_clock_gives_later_sections_the_unused_budget(gpu_check):
    now = [0.0]
    clock = gpu_check.Clock(100, now=lambda: now[0])
    clock.begin(30)  # first section: its own 30 s
    now[0] = 10.0  # ... done after 10 s
    clock.begin(20)  # second: its 20 s plus the 20 s left over
    assert clock.left() == 40
    now[0] = 55.0  # overran by 5 s
    assert clock.over()
    clock.begin(20)  # third: still its own 20 s
    assert clock.left() == 20
    now[0] = 75.0
    clock.begin(50)  # never past the overall budget
    assert clock.left() == 25
