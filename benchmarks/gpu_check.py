"""One-command GPU acceptance check: kernels, timings, training step, and a real `kedro run`.

On one CUDA GPU, offline, in at most ``--budget-s`` seconds (default 480 = 8 minutes):

1. ``kernel_parity``: every kernel (rms_norm, apply_rope, swiglu, fused_linear_ce with token
   weights, router_topk, quantize_int8) compiled by Triton on CUDA tensors, fp32 and bf16,
   forward and (where differentiable) input gradients: its error against the float64 torch
   result at most 2x the torch reference's own error at that dtype (or below ``ERROR_FLOOR``,
   the scale of tests/kernels' tolerances); router and int8 bit-for-bit equal to the reference.
   TF32 is off for this section so fp32 means fp32.
2. ``kernel_timings``: the cases of benchmarks/kernel_timings.py (LLaMA-7B-like shapes, bf16),
   each impl timed with ``triton.testing.do_bench``: Triton vs torch eager, vs ``torch.compile``
   of the reference, and vs Liger-Kernel (RMSNorm, RoPE, SwiGLU, fused linear CE) when
   ``liger_kernel`` is importable.
3. ``fused_ce_memory``: peak CUDA memory of one LM-head loss forward + backward (V=32000,
   N=8192, H=4096, bf16) per variant in a fresh process (benchmarks/fused_ce.py): naive,
   ours (Triton), Liger.
4. ``train_step``: tokens/s and MFU in bf16 (autocast, fp32 weights, fused AdamW) of a ~124M
   dense model vs ``LlamaForCausalLM`` and a MoE + MLA model of similar active parameters vs
   ``DeepseekV3ForCausalLM``, identical dims and weights, interleaved in the same run
   (benchmarks/train_step.py). MFU = 6 x active params x tokens/s / the GPU's bf16 peak
   (``xoron_pipelines.device.gpu_peaks``, dense tensor-core figures; ``--peak-flops`` overrides).
5. ``kedro_pretrain``: ``kedro run --pipeline pretrain`` (after a small synth and
   data_processing) in a temporary copy of the project with the shipped ``device: auto``
   defaults and a few steps; the log lines naming the device must say ``cuda``.
6. ``kernel_tests``: ``pytest tests/kernels`` on the GPU (the suite's own cases, compiled).

Each section has a time budget (``BUDGETS``); a section that runs out skips its remaining
items with a note, and sections not reached before the overall budget are skipped. Writes
JSON (``--out``, default benchmarks/results/gpu_check.json) and replaces the section between
the ``gpu_check`` markers of benchmarks/RESULTS.md. Prints each target with PASS / MISS
(a MISS is reported, the exit status stays 0); exits 1 when a correctness check fails
(parity, kernel tests, the kedro run or its device).

    python benchmarks/gpu_check.py                      # on a GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/g.json   # CPU, seconds: same code paths,
        # tiny shapes, Triton's interpreter (fp32), no kedro run, RESULTS.md untouched

Without ``--dry-run`` and without a GPU it exits with status 2 and says so; a GPU run refuses
``TRITON_INTERPRET=1`` (the kernels must be compiled, not interpreted).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:  # the Triton kernels run through the interpreter on CPU; set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:  # importable from tests too
    sys.path.insert(0, str(BENCH))

import fused_ce  # noqa: E402
import kernel_timings  # noqa: E402
import train_step  # noqa: E402

from xoron_pipelines import kernels  # noqa: E402
from xoron_pipelines.device import CPU_PEAK_FLOPS, gpu_peaks  # noqa: E402
from xoron_pipelines.model import count_parameters  # noqa: E402
from xoron_pipelines.model.config import XoronConfig  # noqa: E402

# torch.compile of the references graph-breaks on data-dependent Python (fused CE's backward):
# expected, and its warnings would bury the report
logging.getLogger("torch._dynamo").setLevel(logging.ERROR)

RESULTS_MD = BENCH / "RESULTS.md"
DEFAULT_OUT = BENCH / "results" / "gpu_check.json"
MARK_BEGIN = "<!-- gpu_check:begin (written by benchmarks/gpu_check.py; do not edit by hand) -->"
MARK_END = "<!-- gpu_check:end -->"

#: seconds per section, in the order they run (sum = the default overall budget of 8 minutes)
BUDGETS = {
    "kernel_parity": 45,
    "kernel_timings": 110,  # mostly torch.compile (inductor) of the six references, forward + backward
    "fused_ce_memory": 30,
    "train_step": 90,
    "kedro_pretrain": 130,
    "kernel_tests": 75,
}
DEFAULT_BUDGET_S = sum(BUDGETS.values())

#: Parity criterion (FlashAttention's): against the float64 result of the torch reference, the Triton
#: kernel's max error (relative to the result's largest magnitude) must be at most 2x that of the
#: torch reference run at the same dtype, or below this floor (tests/kernels' tolerance scale).
ERROR_FLOOR = {"float32": 1e-5, "bfloat16": 1e-2}
#: kernels whose Triton and torch codes agree bit for bit at any dtype (as tests/kernels asserts)
EXACT = {"router_topk", "quantize_int8"}

#: targets of issue 11 on an H100
TARGET_DENSE_MFU = 0.40
TARGET_STEP_RATIO = 1.2

# ~124M-parameter dense model (GPT-2-small width, Llama layout) and a MoE + MLA model of similar
# active parameters per token (DeepSeek-V3 layout: layer 0 dense, then 16 experts top-2 + 1 shared).
DENSE_125M = dict(
    train_step.DENSE,
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    intermediate_size=2560,
    max_position_embeddings=2048,
)
MOE_MLA_125M = dict(
    train_step.MOE_MLA,
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    intermediate_size=2560,
    max_position_embeddings=2048,
    q_lora_rank=384,
    kv_lora_rank=256,
    qk_rope_head_dim=32,
    qk_nope_head_dim=64,
    v_head_dim=64,
    num_experts=16,
    num_experts_per_tok=2,
    num_shared_experts=1,
    moe_intermediate_size=640,
)
TINY = dict(
    hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=512, max_position_embeddings=64
)
DRY_MODELS = {
    "dense": dict(train_step.DENSE, **TINY),
    "moe_mla": dict(
        train_step.MOE_MLA,
        **TINY,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        num_experts=4,
        moe_intermediate_size=32,
    ),
}
GPU_MODELS = {"dense": DENSE_125M, "moe_mla": MOE_MLA_125M}


# --------------------------------------------------------------------------- helpers
class Clock:
    """Overall deadline plus one per section; ``over()`` says whether the section's time is up.

    A section gets its own budget, plus what the sections before it left unused (their budgets
    summed minus the time they took), never past the overall deadline."""

    def __init__(self, total_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.start = now()
        self.end = self.start + total_s
        self.section_end = self.end
        self.planned = 0.0  # budgets of the sections begun so far

    def begin(self, budget_s: float) -> None:
        self.planned += budget_s
        self.section_end = min(max(self.now() + budget_s, self.start + self.planned), self.end)

    def over(self) -> bool:
        return self.now() > self.section_end

    def left(self) -> float:
        return max(0.0, self.section_end - self.now())

    def elapsed(self) -> float:
        return self.now() - self.start


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def peak_bf16_flops(gpu_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU named ``gpu_name`` from the library's table
    (:func:`xoron_pipelines.device.gpu_peaks`, the one training's MFU uses); None when unknown."""
    found = gpu_peaks(gpu_name)
    return found[1].get("bf16") if found else None


def machine_info(dry_run: bool) -> dict:
    info = {
        "gpu": None,
        "driver": None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "liger_kernel": _version("liger-kernel"),
        "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
    }
    if torch.cuda.is_available() and not dry_run:
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# --------------------------------------------------------------------------- 1. parity
def _parity_cases(device: str, dtype: torch.dtype, dry_run: bool) -> list[tuple[str, Callable, list, bool]]:
    """(kernel, fn(impl, *inputs), inputs, differentiable): odd shapes like tests/kernels'."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0, grad=True):
        return (scale * torch.randn(*shape, generator=gen)).to(device, dtype).requires_grad_(grad)

    n, h, v = (37, 51, 1000) if dry_run else (1031, 1023, 32000)
    heads, seq, dim = (3, 17, 10) if dry_run else (12, 509, 64)
    experts, k = (13, 3) if dry_run else (64, 6)
    emb = torch.arange(seq, dtype=torch.float32)[:, None] / 10000 ** (torch.arange(0, dim, 2) / dim)
    emb = torch.cat([emb, emb], dim=-1)[None]
    cos, sin = emb.cos().to(device, dtype), emb.sin().to(device, dtype)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::7] = -100
    token_weights = torch.rand(n, generator=gen).to(device)
    bias = (0.2 * torch.randn(experts, generator=gen)).to(device)  # fp32, as the model's buffer
    labels = labels.to(device)
    return [
        ("rms_norm", lambda impl, x, w: kernels.rms_norm(x, w, 1e-6, impl=impl), [rand(5, n // 5, h), rand(h)], True),
        ("apply_rope", lambda impl, x: kernels.apply_rope(x, cos, sin, impl=impl), [rand(2, heads, seq, dim)], True),
        ("swiglu", lambda impl, g, u: kernels.swiglu(g, u, impl=impl), [rand(n, h, scale=3.0), rand(n, h)], True),
        (
            "fused_linear_ce",
            lambda impl, x, w: kernels.fused_linear_cross_entropy(x, w, labels, loss_weights=token_weights, impl=impl),
            [rand(n, h), rand(v, h, scale=0.05)],
            True,
        ),
        (
            "router_topk",
            lambda impl, s: kernels.router_topk(s, bias, k, impl=impl),
            [torch.rand(n, experts, generator=gen).to(device, dtype).requires_grad_()],
            True,
        ),
        ("quantize_int8", lambda impl, x: kernels.quantize_int8_rows(x, impl=impl), [rand(n, h, grad=False)], False),
    ]


def _outputs_and_grads(fn: Callable, impl: str, inputs: list[torch.Tensor], differentiable: bool):
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(impl, *leaves)
    outs = list(out) if isinstance(out, tuple) else [out]
    grads: tuple = ()
    if differentiable:
        diff = [o for o in outs if o.requires_grad]
        gen = torch.Generator().manual_seed(1234)
        cots = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in diff]
        grads = torch.autograd.grad(diff, [t for t in leaves if t.requires_grad], cots)
    return outs, list(grads)


def _rel_err(x: torch.Tensor, gold: torch.Tensor) -> float:
    """max |x - gold| / max |gold| (inf for a shape mismatch or a non-finite value)."""
    if x.shape != gold.shape:
        return math.inf
    x, gold = x.detach().double(), gold.detach().double()
    if not torch.isfinite(x).all():
        return math.inf
    scale = float(gold.abs().max()) if gold.numel() else 0.0
    return float((x - gold).abs().max()) / max(scale, 1e-30) if x.numel() else 0.0


def _compare(kernel: str, dtype: str, cand, ref, gold) -> dict:
    """One parity row from the (outputs + gradients) of the candidate, the reference at the same
    dtype and the float64 reference."""
    if kernel in EXACT:
        ok = len(cand) == len(ref) and all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(cand, ref))
        return {"criterion": "bit-for-bit equal to the torch reference", "ok": ok}
    err_c = [_rel_err(a, g) for a, g in zip(cand, gold)]
    err_r = [_rel_err(a, g) for a, g in zip(ref, gold)]
    ok = len(cand) == len(ref) == len(gold) and all(c <= max(2 * r, ERROR_FLOOR[dtype]) for c, r in zip(err_c, err_r))
    return {
        "criterion": f"rel. error vs float64 <= max(2 x torch's at {dtype}, {ERROR_FLOOR[dtype]})",
        "max_rel_err": max(err_c),
        "torch_max_rel_err": max(err_r),
        "ok": ok,
    }


def kernel_parity(ctx: SimpleNamespace, clock: Clock) -> dict:
    rows, skipped = [], []
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            # Triton's interpreter mishandles bf16 stores, so a dry run checks bf16 on the torch path only
            candidate = "torch" if ctx.dry_run and dtype == torch.bfloat16 else "triton"
            for kernel, fn, inputs, differentiable in _parity_cases(ctx.device, dtype, ctx.dry_run):
                if clock.over():
                    skipped.append(f"{kernel} {name}")
                    continue
                wide = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
                results = [
                    _outputs_and_grads(fn, impl, x, differentiable)
                    for impl, x in ((candidate, inputs), ("torch", inputs), ("torch", wide))
                ]
                cand, ref, gold = (outs + grads for outs, grads in results)
                row = {"kernel": kernel, "dtype": name, "candidate": candidate, "backward": differentiable}
                rows.append(row | _compare(kernel, name, cand, ref, gold))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"rows": rows, "skipped": skipped, "ok": all(r["ok"] for r in rows)}


# --------------------------------------------------------------------------- 2. timings
def _liger_calls(case: kernel_timings.Case, shapes: dict, device: str, dtype: torch.dtype) -> dict[str, Callable]:
    """Liger-Kernel's counterpart of a kernel_timings case, where it has one."""
    import liger_kernel.transformers as lk
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    if case.name == "rms_norm":
        try:  # in_place (default True) would overwrite the reused cotangent in the backward
            norm = lk.LigerRMSNorm(shapes["hidden"], eps=1e-6, in_place=False)
        except TypeError:  # older Liger: no in_place argument, never in place
            norm = lk.LigerRMSNorm(shapes["hidden"], eps=1e-6)
        norm = norm.to(device, dtype)
        return {"liger": lambda x, w: norm(x)}
    if case.name == "apply_rope":
        pos = torch.arange(shapes["seq"], device=device, dtype=torch.float32)
        d = shapes["head_dim"]
        emb = pos[:, None] / 10000 ** (torch.arange(0, d, 2, device=device).float() / d)
        emb = torch.cat([emb, emb], dim=-1)[None]
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        b = max(1, shapes["tokens"] // shapes["seq"])
        k1 = torch.randn(b, 1, shapes["seq"], d, device=device, dtype=dtype)  # Liger rotates q and k together

        return {"liger": lambda x: lk.liger_rotary_pos_emb(x, k1, cos, sin)[0]}
    if case.name == "swiglu":
        return {"liger": lambda g, u: LigerSiLUMulFunction.apply(g, u)}
    if case.name == "fused_linear_ce":
        loss = lk.LigerFusedLinearCrossEntropyLoss()
        labels = torch.randint(0, shapes["vocab"], (shapes["ce_tokens"],), device=device)
        return {"liger": lambda h, w: loss(w, h, labels)}
    return {}


def kernel_timing_rows(ctx: SimpleNamespace, clock: Clock) -> dict:
    shapes = kernel_timings.SHAPES["smoke" if ctx.dry_run else "full"]
    dtype = torch.float32 if ctx.dry_run else torch.bfloat16
    # On CPU, inductor would compile C++ for a few-millisecond check: the eager backend still
    # runs the reference through torch.compile (dynamo), which is the code path being kept alive.
    backend = "eager" if ctx.dry_run else "inductor"
    use_liger = liger_available() and not ctx.dry_run
    rows, ratios, skipped, notes = [], [], [], []
    if not use_liger:
        notes.append("liger_kernel not importable: no Liger columns" if not ctx.dry_run else "dry run: no Liger")
    for case in kernel_timings._cases(shapes, ctx.device, dtype):
        if clock.over():
            skipped.append(case.name)
            continue
        case.calls = {k: v for k, v in case.calls.items() if k != "naive"}
        case.calls["compile"] = torch.compile(case.calls["torch"], backend=backend, dynamic=False)
        if use_liger:
            try:
                case.calls.update(_liger_calls(case, shapes, ctx.device, dtype))
            except Exception as exc:  # a Liger API drift must not hide our own figures
                notes.append(f"liger {case.name}: {type(exc).__name__}: {exc}")
        try:
            case_rows = kernel_timings.run(case, ctx.dry_run)
        except Exception as exc:  # torch.compile or Liger failing on this case: keep ours vs eager
            notes.append(f"{case.name}: {type(exc).__name__}: {exc}; timed against eager only")
            case.calls = {k: case.calls[k] for k in ("triton", "torch")}
            case_rows = kernel_timings.run(case, ctx.dry_run)
        rows += case_rows
        by = {r["impl"]: r for r in case_rows}
        ratio = {"kernel": case.name}
        for other in ("torch", "compile", "liger"):
            if other not in by:
                continue
            name = "eager" if other == "torch" else other
            ratio[f"vs_{name}_fwd"] = by[other]["fwd_ms"] / by["triton"]["fwd_ms"]
            if case.backward:
                ratio[f"vs_{name}_fwd_bwd"] = by[other]["fwd_bwd_ms"] / by["triton"]["fwd_bwd_ms"]
        ratios.append(ratio)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "shapes": shapes,
        "compile_backend": backend,
        "ratio_meaning": "time of the other impl / time of ours (Triton): > 1 means ours is faster",
        "rows": rows,
        "ratios": ratios,
        "skipped": skipped,
        "notes": notes,
    }


# --------------------------------------------------------------------------- 3. fused CE memory
def fused_ce_memory(ctx: SimpleNamespace, clock: Clock) -> dict:
    if ctx.dry_run:
        args = SimpleNamespace(vocab=512, tokens=64, hidden=32, chunk_size=None, dtype="float32")
        variants = ["naive", "fused_torch"]
    else:
        args = SimpleNamespace(vocab=32000, tokens=8192, hidden=4096, chunk_size=None, dtype="bfloat16")
        variants = ["naive", "fused_triton"] + (["liger"] if liger_available() else [])
    rows, skipped, notes = [], [], []
    for variant in variants:
        if clock.over():
            skipped.append(variant)
            continue
        try:
            rows.append(fused_ce._measure(variant, args))
        except subprocess.CalledProcessError as exc:
            notes.append(f"{variant} failed: {(exc.stderr or '').strip()[-500:]}")
    by = {r["variant"]: r for r in rows}
    ours = by.get("fused_triton") or by.get("fused_torch")
    result = {"args": vars(args), "rows": rows, "skipped": skipped, "notes": notes}
    if ours and "naive" in by:
        result["ours_vs_naive_peak"] = ours["peak_bytes"] / by["naive"]["peak_bytes"]
    if ours and "liger" in by:
        result["ours_vs_liger_peak"] = ours["peak_bytes"] / by["liger"]["peak_bytes"]
    return result


# --------------------------------------------------------------------------- 4. train step
def train_step_pairs(ctx: SimpleNamespace, clock: Clock) -> dict:
    models = DRY_MODELS if ctx.dry_run else GPU_MODELS
    if ctx.dry_run:
        args = SimpleNamespace(batch=1, seq=16, steps=1, warmup=1, rounds=2, adamw="fused")
    else:
        args = SimpleNamespace(batch=8, seq=1024, steps=4, warmup=2, rounds=4, adamw="fused")
    args.device, args.precision = ctx.device, "bf16"
    peak = ctx.peak_flops
    pairs, skipped, notes = [], [], []
    for name, fields in models.items():
        if clock.over():
            skipped.append(name)
            continue
        active = count_parameters(XoronConfig(**fields))["active_per_token"]
        try:
            res = train_step.bench_pair(name, fields, args)
        except Exception as exc:  # e.g. the native class failing on this GPU: report, go on
            notes.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        res["active_params"] = active
        res["mfu"] = {k: 6.0 * active * v / peak if peak else None for k, v in res["tokens_per_s"].items()}
        pairs.append(res)
    return {
        "batch": args.batch,
        "seq": args.seq,
        "precision": "bf16 autocast, fp32 weights, fused AdamW",
        "peak_flops": peak,
        "pairs": pairs,
        "skipped": skipped,
        "notes": notes,
    }


# --------------------------------------------------------------------------- 5. kedro run
DEVICE_WORD = re.compile(r"\b(cuda(?::\d+)?|cpu)\b", re.IGNORECASE)


def device_lines(log: str) -> list[str]:
    """The log lines that mention a device (``device`` in the line), trimmed."""
    return [line.strip() for line in log.splitlines() if "device" in line.lower()]


def devices_named(lines: list[str]) -> list[str]:
    """Device names (``cuda``, ``cuda:N``, ``cpu``) the device lines state, in order, deduplicated."""
    seen: list[str] = []
    for line in lines:
        for word in DEVICE_WORD.findall(line):
            if word.lower() not in seen:
                seen.append(word.lower())
    return seen


def make_project_copy(dst: Path) -> Path:
    """conf/, pyproject.toml and empty data layers of this checkout at ``dst`` (the package is
    imported from src/ through PYTHONPATH); MLflow then writes ``dst/mlflow.db``."""
    shutil.copytree(ROOT / "conf", dst / "conf")
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")
    for layer in ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input", "06_models"):
        (dst / "data" / layer).mkdir(parents=True, exist_ok=True)
    for layer in ("07_model_output", "08_reporting"):
        (dst / "data" / layer).mkdir(exist_ok=True)
    (dst / "src").mkdir(exist_ok=True)
    return dst


def kedro_commands() -> list[list[str]]:
    from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES

    kedro = [sys.executable, "-m", "kedro", "run", "--pipeline"]
    synth = ",".join(f"synth.counts.{t}=10" for t in SYNTH_TYPES)
    data = "data_processing.stdlib_corpus.max_bytes=150000,data_processing.packing.max_seq_len=128"
    pretrain = ",".join(
        [
            "pretrain.stages.language.train.max_steps=20",
            "pretrain.stages.language.train.warmup_steps=2",
            "pretrain.stages.language.train.eval_steps=10",
            "pretrain.stages.code.train.max_steps=4",
            "pretrain.stages.code.train.warmup_steps=1",
            "pretrain.stages.language.eval.batch_size=4",  # the small corpus has few validation rows
            "pretrain.stages.code.eval.batch_size=4",
        ]
    )
    return [
        kedro + ["synth", "--params", synth],
        kedro + ["data_processing", "--params", data],
        kedro + ["pretrain", "--params", pretrain],
    ]


def kedro_pretrain(ctx: SimpleNamespace, clock: Clock) -> dict:
    commands = kedro_commands()
    shown = [" ".join(c[2:]) for c in commands]
    if ctx.dry_run and not ctx.with_kedro:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            make_project_copy(Path(tmp) / "project")  # keep the copy code exercised
        return {"status": "skipped", "note": "dry run: no kedro run (--with-kedro runs it on CPU)", "commands": shown}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.update(COLUMNS="200", KEDRO_DISABLE_TELEMETRY="true")
    env.pop("TRITON_INTERPRET", None)
    logs, seconds = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        project = make_project_copy(Path(tmp) / "project")
        # conf/logging.yml's info_file_handler writes unwrapped lines to info.log (the console's
        # rich handler wraps them at the terminal width): the device lines are read from there
        log_file = project / "info.log"
        for cmd in commands:
            log_offset = log_file.stat().st_size if log_file.exists() else 0
            if clock.over():
                return {"status": "partial", "note": "over budget before " + " ".join(cmd[2:6]), "commands": shown}
            t0 = time.monotonic()
            try:
                proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=clock.left())
            except subprocess.TimeoutExpired as exc:
                tail = (exc.stdout or b"")[-2000:]
                return {
                    "status": "partial",
                    "note": "over budget during " + " ".join(cmd[2:6]),
                    "commands": shown,
                    "seconds_per_command": seconds,
                    "log_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail,
                }
            seconds.append(round(time.monotonic() - t0, 1))
            logs.append(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                return {
                    "status": "error",
                    "error": f"{' '.join(cmd[2:6])} exited {proc.returncode}",
                    "log_tail": logs[-1][-3000:],
                    "commands": shown,
                    "seconds_per_command": seconds,
                    "ok": False,
                }
        pretrain_log = log_file.read_bytes()[log_offset:].decode(errors="replace") if log_file.exists() else logs[-1]
    lines = device_lines(pretrain_log)
    named = devices_named(lines)
    result = {} if named else {"note": "no log line of the pretrain run names a device"}
    return result | {
        "commands": shown,
        "seconds_per_command": seconds,
        "device_lines": lines[:20],
        "devices": named,
        "expected": ctx.device,
        "ok": any(d.startswith(ctx.device) for d in named),
    }


# --------------------------------------------------------------------------- 6. kernel tests
def kernel_tests(ctx: SimpleNamespace, clock: Clock) -> dict:
    if ctx.dry_run:
        return {"status": "skipped", "note": "dry run: tests/kernels run interpreted in the normal suite"}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=clock.left())
    except subprocess.TimeoutExpired:
        return {"status": "partial", "note": "over budget", "ok": False}
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", tail[0])}
    return {"returncode": proc.returncode, "summary": tail[0], "counts": counts, "ok": proc.returncode == 0}


SECTIONS: dict[str, Callable[[SimpleNamespace, Clock], dict]] = {
    "kernel_parity": kernel_parity,
    "kernel_timings": kernel_timing_rows,
    "fused_ce_memory": fused_ce_memory,
    "train_step": train_step_pairs,
    "kedro_pretrain": kedro_pretrain,
    "kernel_tests": kernel_tests,
}


# --------------------------------------------------------------------------- targets / report
def _target(name: str, value, threshold: float, higher_is_better: bool, missing: str | None = None) -> dict:
    if value is None:
        return {"target": name, "value": None, "threshold": threshold, "result": "N/A", "note": missing}
    met = value >= threshold if higher_is_better else value <= threshold
    return {"target": name, "value": value, "threshold": threshold, "result": "PASS" if met else "MISS"}


def evaluate_targets(sections: dict) -> list[dict]:
    """Issue 11's H100 targets from the section results; N/A with a reason where a figure is missing."""
    pairs = {p["pair"]: p for p in sections.get("train_step", {}).get("pairs", [])}
    dense = pairs.get("dense")
    dense_mfu = dense["mfu"]["xoron"] if dense else None
    out = [
        _target(
            "dense bf16 MFU >= 40%", dense_mfu, TARGET_DENSE_MFU, True, "no dense train-step figure or no peak FLOPs"
        )
    ]
    for name in ("dense", "moe_mla"):
        ratio = pairs[name]["ratio"] if name in pairs else None
        native = pairs[name]["native"] if name in pairs else "native"
        out.append(
            _target(f"{name} train step >= 1.2x {native}", ratio, TARGET_STEP_RATIO, True, "no train-step figure")
        )
    mem = sections.get("fused_ce_memory", {}).get("ours_vs_liger_peak")
    out.append(_target("fused CE peak memory <= Liger", mem, 1.0, False, "Liger-Kernel not measured"))
    speed = next(
        (
            r.get("vs_liger_fwd_bwd")
            for r in sections.get("kernel_timings", {}).get("ratios", [])
            if r["kernel"] == "fused_linear_ce"
        ),
        None,
    )
    out.append(_target("fused CE fwd+bwd speed >= Liger", speed, 1.0, True, "Liger-Kernel not timed"))
    return out


def correctness_ok(sections: dict) -> bool:
    """Parity, the kernel tests and the kedro run (where they ran) all passed."""
    return all(sections[name].get("ok", True) for name in ("kernel_parity", "kernel_tests", "kedro_pretrain"))


def _fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    """The RESULTS.md section for one run (the text between the gpu_check markers)."""
    m, s = report["machine"], report["sections"]
    lines = [
        f"Run {report['started_utc']} (wall {report['wall_s']:.0f} s): {m['gpu'] or 'no GPU (dry run)'}, "
        f"driver {m['driver']}, "
        f"CUDA {m['cuda']}, torch {m['torch']}, triton {m['triton']}, transformers {m['transformers']}, "
        f"liger-kernel {m['liger_kernel'] or 'not installed'}. Sections: "
        + ", ".join(
            f"{name} {sec['status']} ({sec['seconds']:.0f} s)" + (f": {sec['error']}" if sec.get("error") else "")
            for name, sec in s.items()
        )
        + ".",
        "",
        "| target | value | threshold | result |",
        "| --- | ---: | ---: | --- |",
    ]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {_fmt(t['value'], '.3f')} | {t['threshold']} | {t['result']} |")
    parity = s["kernel_parity"]
    bad = [f"{r['kernel']} {r['dtype']}" for r in parity.get("rows", []) if not r["ok"]]
    lines += [
        "",
        f"Kernel parity (Triton vs torch, fp32 + bf16, fwd + bwd): {len(parity.get('rows', []))} cases, "
        + (f"failed: {', '.join(bad)}" if bad else "all within tolerance")
        + (f"; skipped: {', '.join(parity['skipped'])}" if parity.get("skipped") else "")
        + ".",
    ]
    kt = s["kernel_tests"]
    lines.append(f"`pytest tests/kernels` on the GPU: {kt.get('summary') or kt.get('note') or kt.get('error')}.")
    timing = s["kernel_timings"]
    if timing.get("ratios"):
        lines += [
            "",
            f"Kernel timings ({timing.get('dtype')}; other impl's time / ours, > 1 = ours faster):",
            "",
            "| kernel | vs eager fwd | vs eager f+b | vs compile fwd | vs compile f+b | vs Liger fwd | vs Liger f+b |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in timing["ratios"]:
            cols = [r.get(f"vs_{o}_{p}") for o in ("eager", "compile", "liger") for p in ("fwd", "fwd_bwd")]
            lines.append(f"| {r['kernel']} | " + " | ".join(_fmt(c) for c in cols) + " |")
    mem = s["fused_ce_memory"]
    if mem.get("rows"):
        lines += [
            "",
            "Fused linear CE peak memory (fwd + bwd, "
            + ", ".join(f"{k}={v}" for k, v in mem["args"].items() if v)
            + "): "
            + ", ".join(f"{r['variant']} {r['peak_bytes'] / 2**20:.0f} MiB" for r in mem["rows"])
            + ".",
        ]
    steps = s["train_step"]
    if steps.get("pairs"):
        lines += [
            "",
            f"Train step, {steps['precision']}, batch {steps['batch']} x {steps['seq']}:",
            "",
            "| pair | active params | xoron tok/s | native tok/s | ratio | xoron MFU | native MFU |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for p in steps["pairs"]:
            tps, mfu = p["tokens_per_s"], p["mfu"]
            lines.append(
                f"| {p['pair']} vs {p['native']} | {p['active_params'] / 1e6:.0f}M | {tps['xoron']:,.0f} | "
                f"{tps[p['native']]:,.0f} | {p['ratio']:.2f}x | {_fmt(mfu['xoron'], '.1%')} | {_fmt(mfu[p['native']], '.1%')} |"
            )
    kedro = s["kedro_pretrain"]
    lines += [
        "",
        f"`kedro run --pipeline pretrain` (device: auto): devices in the log {kedro.get('devices')}, "
        f"{'skipped' if kedro['status'] == 'skipped' else 'ok' if kedro.get('ok') else 'NOT ok'}"
        + (f" ({kedro.get('note') or kedro.get('error')})" if kedro.get("note") or kedro.get("error") else "")
        + ".",
    ]
    notes = [f"{name}: {n}" for name, sec in s.items() for n in sec.get("notes", [])]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    return "\n".join(lines)


def splice_results(text: str, body: str) -> str:
    """``text`` with the part between the gpu_check markers replaced by ``body`` (the markers
    and a heading appended at the end when absent)."""
    block = f"{MARK_BEGIN}\n{body.strip()}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        return head + block + rest.split(MARK_END, 1)[1]
    return text.rstrip("\n") + "\n\n## GPU acceptance check (benchmarks/gpu_check.py)\n\n" + block + "\n"


def print_summary(report: dict) -> None:
    s = report["sections"]
    for name, sec in s.items():
        extra = f" ({sec['note']})" if sec.get("note") else ""
        extra += f" ERROR {sec['error']}" if sec.get("error") else ""
        print(f"[{name}] {sec['status']} in {sec['seconds']:.1f} s{extra}")
    for r in s["kernel_parity"].get("rows", []):
        print(
            f"  parity {r['kernel']:<16}{r['dtype']:<9}{r['candidate']:<7} "
            + (
                f"rel err {r['max_rel_err']:.1e} (torch {r['torch_max_rel_err']:.1e})"
                if "max_rel_err" in r
                else "exact"
            )
            + f"  {'ok' if r['ok'] else 'FAIL'}"
        )
    for r in s["kernel_timings"].get("ratios", []):
        print("  timing " + f"{r['kernel']:<16}" + "  ".join(f"{k} {v:.2f}x" for k, v in r.items() if k != "kernel"))
    for p in s["train_step"].get("pairs", []):
        print(
            f"  train_step {p['pair']:<8} xoron {p['tokens_per_s']['xoron']:,.0f} tok/s vs {p['native']} "
            f"{p['tokens_per_s'][p['native']]:,.0f} tok/s: {p['ratio']:.2f}x, MFU {_fmt(p['mfu']['xoron'], '.1%')}"
        )
    for name, sec in s.items():
        for note in sec.get("notes", []):
            print(f"  note {name}: {note}")
    if s["kedro_pretrain"].get("device_lines"):
        print("  kedro device lines: " + " | ".join(s["kedro_pretrain"]["device_lines"][:3]))
    tag = " (dry run on CPU: figures meaningless)" if report["dry_run"] else ""
    print(f"Targets{tag}:")
    for t in report["targets"]:
        print(
            f"  {t['result']:<4} {t['target']}: {_fmt(t['value'], '.3f')}"
            + (f" ({t['note']})" if t.get("note") else "")
        )
    print(f"Correctness checks: {'PASS' if report['checks_ok'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, seconds; RESULTS.md untouched")
    parser.add_argument(
        "--out", type=Path, help=f"JSON path (default {DEFAULT_OUT.relative_to(ROOT)}; dry run: a temp file)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="overall time budget (section budgets scale with it)"
    )
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--peak-flops", type=float, help="bf16 peak FLOP/s of the GPU for MFU (default: table)")
    parser.add_argument("--no-results-md", action="store_true", help="do not touch benchmarks/RESULTS.md")
    parser.add_argument(
        "--with-kedro", action="store_true", help="dry run: also run the kedro section on CPU (about a minute)"
    )
    args = parser.parse_args(argv)
    if not args.dry_run:
        if not torch.cuda.is_available():
            print(
                "benchmarks/gpu_check.py is the GPU acceptance check and needs a CUDA GPU; none is visible "
                "here. Run it on a GPU machine, or use --dry-run to check the script on CPU.",
                file=sys.stderr,
            )
            return 2
        if kernels.dispatch.triton_interpreting():
            print(
                "TRITON_INTERPRET=1 is set: the GPU check must run compiled Triton kernels. Unset it and rerun.",
                file=sys.stderr,
            )
            return 2
    ctx = SimpleNamespace(dry_run=args.dry_run, device="cpu" if args.dry_run else "cuda", with_kedro=args.with_kedro)
    machine = machine_info(args.dry_run)
    ctx.peak_flops = args.peak_flops or (CPU_PEAK_FLOPS if args.dry_run else peak_bf16_flops(machine["gpu"] or ""))
    machine["peak_bf16_flops"] = ctx.peak_flops
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    torch.manual_seed(0)
    clock = Clock(args.budget_s)
    sections: dict[str, dict] = {}
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            sections[name] = {"status": "skipped", "note": "not in --only", "seconds": 0.0}
            continue
        if clock.elapsed() >= args.budget_s:
            sections[name] = {"status": "skipped", "note": "overall budget spent", "seconds": 0.0}
            continue
        budget = BUDGETS[name] * args.budget_s / DEFAULT_BUDGET_S
        clock.begin(budget)
        t0 = time.monotonic()
        try:
            result = fn(ctx, clock)
            result.setdefault("status", "partial" if result.get("skipped") else "ok")
        except Exception as exc:  # one broken section must not lose the others' figures
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "ok": False}
        result["seconds"] = time.monotonic() - t0
        result["budget_s"] = round(budget, 1)
        sections[name] = result
        print(f"[{name}] {result['status']} ({result['seconds']:.1f} s)", flush=True)
    report = {
        "schema": 1,
        "dry_run": args.dry_run,
        "started_utc": started,
        "wall_s": clock.elapsed(),
        "budget_s": args.budget_s,
        "machine": machine,
        "sections": sections,
    }
    report["targets"] = evaluate_targets(sections)
    report["checks_ok"] = correctness_ok(sections)
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-")) / "gpu_check.json" if args.dry_run else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    section = markdown(report)
    out.with_suffix(".md").write_text(section + "\n")
    print_summary(report)
    print(f"JSON: {out} (Markdown beside it)")
    if not args.dry_run and not args.no_results_md:
        RESULTS_MD.write_text(splice_results(RESULTS_MD.read_text(), section))
        print(f"RESULTS.md: section between the gpu_check markers replaced ({RESULTS_MD})")
    return 0 if report["checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
