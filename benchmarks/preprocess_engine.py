"""Benchmark of data_processing end to end on the local engine and on Ray Data (1 and 2 workers).

Run: ``python benchmarks/preprocess_engine.py [--copies 2] [--shards 8] [--arms local,ray1,ray2]``

The corpus is the one of benchmarks/preprocess.py (the Python standard library's code + prose,
``--copies`` rewritten variants: no exact or near duplicates among copies) split into
``--shards`` JSONL files (a large corpus comes as many files; a Ray task reads one). Each arm runs
in a fresh process: the ``data_processing`` nodes (ledger: ingest, clean, exact + MinHash dedup;
BPE tokenizer on a capped sample; tokenize + pack) with ``engine: local``, or ``engine: ray`` on a
local Ray instance of 1 or 2 CPUs. Ray's start-up (``ray.init``, a fixed cost per run) is timed
apart from the pipeline. Prints wall times, throughput (corpus MB and content tokens per
second), the ray 1-worker overhead vs local (target <= 20%), the 1 -> 2 worker speed-up, and
checks that every arm gives the same record counts and the same packed rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one tokenizer thread per worker: a fair per-worker rate
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))


def build_shards(directory: Path, copies: int, shards: int) -> tuple[Path, int]:
    """The benchmarks/preprocess.py corpus split round-robin into ``shards`` JSONL files."""
    from preprocess import build_corpus

    path, size = build_corpus(directory / "whole", copies)
    out = directory / "shards"
    out.mkdir(parents=True, exist_ok=True)
    handles = [(out / f"part-{k:03d}.jsonl").open("w", encoding="utf-8") for k in range(shards)]
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            handles[n % shards].write(line)
    for h in handles:
        h.close()
    path.unlink()
    return out, size


def params_for(corpus: Path, engine: dict) -> dict:
    from preprocess import params_for as base

    values = base(corpus).model_dump()
    values["sources"][0]["path"] = str(corpus)
    values["tokenizer"] = {"vocab_size": 8000, "max_train_chars": 5_000_000}
    values["engine"] = engine
    return values


def child(corpus: Path, arm: str, out: Path) -> None:
    """One arm, in this (fresh) process; writes result.json."""
    from contextlib import nullcontext

    from xoron_pipelines.cluster import EngineSettings, ray_session
    from xoron_pipelines.data import engine_ray
    from xoron_pipelines.pipelines.data_processing import nodes

    driver: dict[str, float] = {}  # seconds of the driver-side steps of the ray path

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                driver[name] = driver.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    engine_ray._write_ledger = timed("write_ledger", engine_ray._write_ledger)
    engine_ray.resolve_duplicates = timed("resolve", engine_ray.resolve_duplicates)
    engine_ray.tokenize_ledger = timed("tokenize_on_workers", engine_ray.tokenize_ledger)
    engine = {"kind": "local"} if arm == "local" else {"kind": "ray", "num_cpus": int(arm[3:])}
    params = params_for(corpus, engine)
    started = time.perf_counter()
    session = ray_session(EngineSettings(**engine)) if arm != "local" else nullcontext()
    with session:
        if arm != "local":
            import ray

            ray.get([ray.remote(lambda: 0).remote() for _ in range(engine["num_cpus"])])  # workers up
        t_init = time.perf_counter() - started
        started = time.perf_counter()
        ledger = nodes.build_ledger(params)
        t_ledger = time.perf_counter() - started
        tok, _ = nodes.train_tokenizer(ledger, params)
        t_tok = time.perf_counter() - started - t_ledger
        train, val, _, manifest, _ = nodes.pack(ledger, tok, params)
        total = time.perf_counter() - started
    counts = nodes.count_records(ledger)
    digest = hashlib.sha256()
    for shards in (train, val):
        for batch in shards.iter_batches(columns=["input_ids", "length"]):
            digest.update(batch.column("input_ids").flatten().to_numpy().tobytes())
    splits = manifest["splits"]
    result = {
        "arm": arm,
        "init_s": t_init,
        "seconds": total,
        "ledger_s": t_ledger,
        "tokenizer_s": t_tok,
        "pack_s": total - t_ledger - t_tok,
        "tokens": splits["train"]["tokens"] + splits["val"]["tokens"],
        "counts": counts.to_dict(orient="records"),
        "packed_sha256": digest.hexdigest(),
        "driver_steps_s": driver,
    }
    (out / "result.json").write_text(json.dumps(result))


def run_arm(corpus: Path, arm: str, work: Path) -> dict:
    out = work / arm
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path("src").resolve()), os.environ.get("PYTHONPATH")])),
    }
    subprocess.run(
        [sys.executable, __file__, "--child", arm, "--corpus", str(corpus), "--out", str(out)], check=True, env=env
    )
    return json.loads((out / "result.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--arms", default="local,ray1,ray2")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.corpus, args.child, args.out)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xoron-bench-engine-"))
    corpus, size = build_shards(work / "corpus", args.copies, args.shards)
    mb = size / 1e6
    print(f"corpus: {mb:.1f} MB in {args.shards} shards ({corpus})")
    results = {arm: run_arm(corpus, arm, work) for arm in args.arms.split(",")}
    print(f"{'arm':6} {'init s':>7} {'ledger s':>9} {'tok s':>7} {'pack s':>7} {'total s':>8} {'MB/s':>6} {'tok/s':>9}")
    for arm, r in results.items():
        print(
            f"{arm:6} {r['init_s']:7.1f} {r['ledger_s']:9.1f} {r['tokenizer_s']:7.1f} {r['pack_s']:7.1f} "
            f"{r['seconds']:8.1f} {mb / r['seconds']:6.2f} {r['tokens'] / r['seconds']:9,.0f}"
        )
    for arm, r in results.items():
        if r["driver_steps_s"]:
            print(f"{arm}: steps {', '.join(f'{k} {v:.1f}s' for k, v in r['driver_steps_s'].items())}")
    first = next(iter(results.values()))
    same = all(
        r["counts"] == first["counts"] and r["packed_sha256"] == first["packed_sha256"] for r in results.values()
    )
    print(f"same record counts and packed rows in every arm: {same}")
    if "local" in results and "ray1" in results:
        overhead = results["ray1"]["seconds"] / results["local"]["seconds"] - 1
        print(f"ray 1-worker overhead vs local: {overhead:+.0%} (target <= +20%)")
    if "ray1" in results and "ray2" in results:
        print(f"ray 1 -> 2 workers speed-up: {results['ray1']['seconds'] / results['ray2']['seconds']:.2f}x")
    if not same:
        sys.exit("arms disagree")


if __name__ == "__main__":
    main()
