"""GPU timings of every Triton kernel against torch eager (needs a CUDA device).

For each kernel the Triton implementation (``impl="triton"``) and the pure-torch reference
(``impl="torch"``, i.e. torch eager) are timed with ``triton.testing.do_bench`` (median ms),
forward only and forward + backward, at LLaMA-7B-like shapes. The fused linear CE is also
timed against the naive unfused path. Prints a table (and optionally writes JSON).

    python benchmarks/kernel_timings.py                    # bf16, default shapes
    python benchmarks/kernel_timings.py --dtype float32 --json kernels.json
    python benchmarks/kernel_timings.py --smoke            # CPU: runs every case once on tiny shapes
                                                    # through Triton's interpreter (checks the
                                                    # script only; its timings mean nothing)

Without a GPU (and without --smoke) it exits with a message saying a GPU is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

if "--smoke" in sys.argv:  # must precede the first triton import
    import os

    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from xoron_pipelines import kernels  # noqa: E402

# name -> full-size shape parameters / tiny smoke-test ones
SHAPES = {
    "full": dict(
        tokens=8192,
        hidden=4096,
        inter=11008,
        heads=32,
        seq=2048,
        head_dim=128,
        vocab=32000,
        experts=256,
        topk=8,
        ce_tokens=8192,
    ),
    "smoke": dict(
        tokens=37, hidden=48, inter=80, heads=2, seq=9, head_dim=16, vocab=300, experts=13, topk=3, ce_tokens=21
    ),
}


@dataclass
class Case:
    """One kernel: a builder of fresh inputs and the calls to compare."""

    name: str
    make_inputs: Callable[[], list[torch.Tensor]]
    calls: dict[str, Callable[..., torch.Tensor]]
    backward: bool = True


def _cases(s: dict, device: str, dtype: torch.dtype) -> list[Case]:
    def rand(*shape, grad=True, scale=1.0):
        return (scale * torch.randn(*shape, device=device, dtype=torch.float32)).to(dtype).requires_grad_(grad)

    b = max(1, s["tokens"] // s["seq"])
    pos = torch.arange(s["seq"], device=device, dtype=torch.float32)
    inv = 1.0 / 10000 ** (torch.arange(0, s["head_dim"], 2, device=device).float() / s["head_dim"])
    emb = torch.cat([pos[:, None] * inv] * 2, dim=-1)[None]
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    labels = torch.randint(0, s["vocab"], (s["ce_tokens"],), device=device)
    bias = 0.01 * torch.randn(s["experts"], device=device)

    def per_impl(fn):
        return {impl: (lambda *a, impl=impl: fn(*a, impl=impl)) for impl in ("triton", "torch")}

    ce = per_impl(lambda h, w, impl: kernels.fused_linear_cross_entropy(h, w, labels, impl=impl))
    ce["naive"] = lambda h, w: kernels.linear_cross_entropy_naive(h, w, labels)
    return [
        Case(
            "rms_norm",
            lambda: [rand(s["tokens"], s["hidden"]), rand(s["hidden"])],
            per_impl(lambda x, w, impl: kernels.rms_norm(x, w, 1e-6, impl=impl)),
        ),
        Case(
            "apply_rope",
            lambda: [rand(b, s["heads"], s["seq"], s["head_dim"])],
            per_impl(lambda x, impl: kernels.apply_rope(x, cos, sin, impl=impl)),
        ),
        Case(
            "swiglu",
            lambda: [rand(s["tokens"], s["inter"]), rand(s["tokens"], s["inter"])],
            per_impl(lambda g, u, impl: kernels.swiglu(g, u, impl=impl)),
        ),
        Case(
            "fused_linear_ce",
            lambda: [rand(s["ce_tokens"], s["hidden"]), rand(s["vocab"], s["hidden"], scale=0.02)],
            ce,
        ),
        Case(
            "router_topk",
            lambda: [rand(s["tokens"], s["experts"]).sigmoid().detach().requires_grad_()],
            per_impl(lambda x, impl: kernels.router_topk(x, bias, s["topk"], impl=impl)[0]),
        ),
        Case(
            "quantize_int8",
            lambda: [rand(s["tokens"], s["hidden"], grad=False)],
            per_impl(lambda x, impl: kernels.quantize_int8_rows(x, impl=impl)[0]),
            backward=False,
        ),
    ]


def _bench_ms(fn: Callable[[], object], grads: list[torch.Tensor], smoke: bool) -> float:
    if smoke:
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, grad_to_none=grads)


def run(case: Case, smoke: bool) -> list[dict]:
    rows = []
    for impl, call in case.calls.items():
        inputs = case.make_inputs()
        row = {
            "kernel": case.name,
            "impl": impl,
            "fwd_ms": _bench_ms(lambda call=call, inputs=inputs: call(*inputs), [], smoke),
        }
        if case.backward:
            out = call(*inputs)
            cot = torch.randn_like(out, dtype=torch.float32).to(out.dtype)
            leaves = [t for t in inputs if t.requires_grad]

            def fwd_bwd(call=call, inputs=inputs, cot=cot):
                call(*inputs).backward(cot)

            row["fwd_bwd_ms"] = _bench_ms(fwd_bwd, leaves, smoke)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--only", nargs="*", help="kernel names to run (default: all)")
    parser.add_argument("--smoke", action="store_true", help="CPU/interpreter dry run on tiny shapes")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit(
            "benchmarks/kernel_timings.py times Triton kernels against torch eager and needs a CUDA GPU; "
            "none is visible here. (Use --smoke to check the script on CPU via TRITON_INTERPRET=1.)"
        )
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else getattr(torch, args.dtype)
    torch.manual_seed(0)
    cases = [
        c
        for c in _cases(SHAPES["smoke" if args.smoke else "full"], device, dtype)
        if not args.only or c.name in args.only
    ]
    where = "CPU interpreter (smoke: timings meaningless)" if args.smoke else torch.cuda.get_device_name()
    print(f"Triton kernels vs torch eager, {dtype}, {where}")
    print(f"{'kernel':<17}{'impl':<8}{'fwd ms':>10}{'fwd+bwd ms':>12}{'fwd speedup':>13}{'f+b speedup':>13}")
    rows = []
    for case in cases:
        case_rows = run(case, args.smoke)
        ref = next(r for r in case_rows if r["impl"] == "torch")
        for r in case_rows:
            r["fwd_speedup"] = ref["fwd_ms"] / r["fwd_ms"]
            fb = r.get("fwd_bwd_ms")
            r["fwd_bwd_speedup"] = ref["fwd_bwd_ms"] / fb if fb else None
            fb_txt = f"{fb:>12.3f}" if fb else f"{'-':>12}"
            sp_txt = f"{r['fwd_bwd_speedup']:>13.2f}" if fb else f"{'-':>13}"
            print(f"{r['kernel']:<17}{r['impl']:<8}{r['fwd_ms']:>10.3f}{fb_txt}{r['fwd_speedup']:>13.2f}{sp_txt}")
        rows += case_rows
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"dtype": str(dtype), "device": where, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
