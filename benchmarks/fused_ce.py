"""Peak memory of fused (chunked) linear + cross-entropy against the naive unfused path.

One forward + backward of the LM-head loss at vocab V, N tokens, hidden H (defaults: the issue's
V=32000, N=2048, H=512), ``hidden`` and ``weight`` both requiring grad. Each variant runs in a
fresh subprocess so allocations cannot be reused between them:

* CPU: peak resident memory above the baseline taken just before the step. The peak is reset
  with ``/proc/self/clear_refs`` (Linux "5" = reset VmHWM) and read from ``VmHWM``; glibc's
  dynamic mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so every large tensor is its
  own mapping and is returned to the OS when freed, which makes RSS track live tensors.
* CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the step; the Triton
  variant is measured too (and Liger-Kernel's fused linear CE, variant ``liger``, when
  benchmarks/gpu_check.py asks for it).

Both figures include the gradients (``weight.grad`` is V x H fp32 in every variant).

    python benchmarks/fused_ce.py                          # defaults, prints a table + ratio
    python benchmarks/fused_ce.py --hidden 1024 --json out.json

Target (issue): fused peak <= 0.3 x naive peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

from xoron_pipelines.kernels import fused_linear_cross_entropy, linear_cross_entropy_naive
from xoron_pipelines.kernels.fused_ce import auto_chunk_size

TARGET_RATIO = 0.3
MiB = 1 << 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _run_step(variant: str, hidden, weight, labels, chunk_size) -> None:
    if variant == "naive":
        loss = linear_cross_entropy_naive(hidden, weight, labels)
    elif variant == "liger":  # Liger-Kernel's fused linear CE (CUDA only; benchmarks/gpu_check.py compares)
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss()(weight, hidden, labels)
    else:
        impl = variant.removeprefix("fused_")
        loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size, impl=impl)
    loss.backward()


def child(args: argparse.Namespace) -> dict:
    """Measure one variant in this (fresh) process; returns the figures as a dict."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=gen).to(device, dtype).requires_grad_()
    weight = (0.02 * torch.randn(args.vocab, args.hidden, generator=gen)).to(device, dtype).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=gen).to(device)
    # warm up kernels, thread pools and lazy initialisation on a tiny problem
    _run_step(
        args.child, hidden[:8].detach().requires_grad_(), weight[:64].detach().requires_grad_(), labels[:8] % 64, 4
    )
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    _run_step(args.child, hidden, weight, labels, args.chunk_size)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kib("VmHWM") * 1024
    return {"variant": args.child, "device": device, "peak_bytes": peak - base, "seconds": time.perf_counter() - start}


def _measure(variant: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--vocab",
        str(args.vocab),
        "--tokens",
        str(args.tokens),
        "--hidden",
        str(args.hidden),
        "--dtype",
        args.dtype,
    ]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: automatic)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    variants = ["naive", "fused_torch"] + (["fused_triton"] if torch.cuda.is_available() else [])
    rows = [_measure(v, args) for v in variants]
    naive = rows[0]["peak_bytes"]
    chunk = args.chunk_size or auto_chunk_size(
        args.tokens, args.vocab, args.hidden, "cuda" if torch.cuda.is_available() else "cpu"
    )
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86_64'})"
    print(f"fused linear CE, V={args.vocab} N={args.tokens} H={args.hidden} {args.dtype}, chunk={chunk} rows, {where}")
    print(f"{'variant':<14}{'peak MiB':>10}{'x naive':>9}{'fwd+bwd s':>11}")
    for r in rows:
        r["ratio"] = r["peak_bytes"] / naive
        print(f"{r['variant']:<14}{r['peak_bytes'] / MiB:>10.1f}{r['ratio']:>9.3f}{r['seconds']:>11.3f}")
    worst = max(r["ratio"] for r in rows[1:])
    verdict = "PASS" if worst <= TARGET_RATIO else "FAIL"
    print(f"fused/naive peak ratio: {worst:.3f} (target <= {TARGET_RATIO}) -> {verdict}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "chunk": chunk, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
