"""Benchmark of the embedding_cache engines: the local engine vs the Ray Data engine (1 and 2
actors) on the same texts (issue 18).

Run: ``python benchmarks/embed_engine.py [--texts 2048] [--batch-size 8] [--repeats 2] [--pairs PATH]``

Texts: the sources (and summary targets) of the synth pipeline's dialogue -> summary pairs
(``data/01_raw/synth/dialogue_summary.jsonl``; ``--pairs`` names another copy). Each arm runs the
whole cache build of a ``pairs`` subset (``CacheBuild.write``: tokenize, encode, int8, decoder
targets, Parquet shards + offsets index) into a temp dir; arms interleaved, ``--repeats`` times,
median taken. Ray runs in this process on a local instance of ``--cpus`` CPUs, started once
(its start is not timed); every Ray build starts its actor pool afresh (each actor imports torch
and loads the encoder), which is timed.

Arms (one core per worker, so the per-worker rates compare):

* ``local 1 thread`` / ``local N threads``: the local engine with ``torch.set_num_threads``;
* ``ray 1 worker`` / ``ray 2 workers``: the Ray engine (each actor: 1 CPU, 1 torch thread --
  Ray sets ``OMP_NUM_THREADS`` to the actor's CPUs; printed below).

Two figures per arm: end-to-end texts/s (``--texts`` / wall, the actor pool start included) and
steady texts/s = (texts - one chunk) / (wall(texts) - wall(one chunk)), the rate once the
workers are up (the actor start, a fixed cost, cancels). Overhead of the engine at 1 worker =
local 1 thread / ray 1 worker - 1 (target <= 20%); scaling = ray 2 workers / ray 1 worker. The
caches of all arms are checked to be byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from embed import PAIRS, TOKENIZER  # noqa: E402


def cache_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(directory)): f.read_bytes()
        for f in sorted(directory.rglob("*"))
        if f.is_file() and f.name != "manifest.json"
    }


def decoder_tokenizer(pairs: list[dict]):
    """The project's tokenizer (data_processing) or, if absent, a small BPE trained on the targets."""
    from transformers import AutoTokenizer

    if (TOKENIZER / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
    from xoron_pipelines.data import tokenizer_training

    texts = [r["target"] for r in pairs[:300]]
    return tokenizer_training.wrap(tokenizer_training.train_bpe(texts, vocab_size=2000, min_frequency=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=2048, help="at least 2 chunks of --batch-size x 32 texts")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance (= cores used)")
    ap.add_argument("--pairs", type=Path, default=PAIRS)
    args = ap.parse_args()

    import ray
    import torch

    from xoron_pipelines.latent.cache_build import CHUNK_BATCHES, Row, plan_subset
    from xoron_pipelines.pipelines.embedding_cache.params import Params

    if not args.pairs.is_file():
        sys.exit(f"{args.pairs} is missing: run `kedro run --pipeline synth` first (or pass --pairs)")
    pairs = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [Row(i, pairs[i % len(pairs)]["source"], pairs[i % len(pairs)]["target"]) for i in range(args.texts)]
    chunk = args.batch_size * CHUNK_BATCHES["mean"]
    if args.texts < 2 * chunk:
        sys.exit(
            f"--texts {args.texts}: give at least 2 chunks ({2 * chunk}: --batch-size x {CHUNK_BATCHES['mean']} x 2)"
        )
    tokenizer = decoder_tokenizer(pairs)
    src = str(ROOT / "src")
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    actor_threads = ray.get(ray.remote(num_cpus=1)(lambda: __import__("torch").get_num_threads()).remote())

    def params(engine: dict) -> Params:
        return Params.model_validate(
            {
                "progress": False,
                "preprocess_batch_size": args.batch_size,
                "skip_preprocessing_if_cached": False,
                "engine": engine,
            }
        )

    arms = {
        "local 1 thread": ({"kind": "local"}, 1),
        f"local {args.cpus} threads": ({"kind": "local"}, args.cpus),
        "ray 1 worker": ({"kind": "ray", "num_workers": 1}, None),
        "ray 2 workers": ({"kind": "ray", "num_workers": 2}, None),
    }
    walls: dict[str, dict[int, list[float]]] = {a: {args.texts: [], chunk: []} for a in arms}
    outputs: dict[str, dict[str, bytes]] = {}
    default_threads = torch.get_num_threads()
    # warm-up: the driver's encoder (all arms use it for the metadata; the local arms to encode)
    with tempfile.TemporaryDirectory() as tmp:
        plan_subset("pairs", rows[:chunk], tokenizer, params({"kind": "local"})).write(Path(tmp))
    for rep in range(args.repeats):
        for arm, (engine, threads) in arms.items():
            torch.set_num_threads(threads or default_threads)
            for n in (args.texts, chunk):
                build = plan_subset("pairs", rows[:n], tokenizer, params(engine))
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    build.write(Path(tmp))
                    walls[arm][n].append(time.perf_counter() - start)
                    if n == args.texts and rep == 0:
                        outputs[arm] = cache_bytes(Path(tmp))
            print(
                f"  rep {rep} {arm}: {walls[arm][args.texts][-1]:.1f} s ({chunk} texts {walls[arm][chunk][-1]:.1f} s)",
                flush=True,
            )
    ray.shutdown()

    identical = all(out == outputs["local 1 thread"] for out in outputs.values())
    print(
        f"\n{args.texts} texts (chunks of {chunk}), batch {args.batch_size}, {os.cpu_count()} cores, "
        f"load avg {os.getloadavg()[0]:.1f}; torch threads per Ray actor: {actor_threads}; "
        f"caches byte-identical across arms: {identical}"
    )
    rate = {}
    print(f"{'arm':<18}{'wall s':>8}{'texts/s':>9}{'steady texts/s':>16}")
    for arm in arms:
        big, small = statistics.median(walls[arm][args.texts]), statistics.median(walls[arm][chunk])
        rate[arm] = (args.texts - chunk) / max(big - small, 1e-9)
        print(f"{arm:<18}{big:>8.1f}{args.texts / big:>9.1f}{rate[arm]:>16.1f}")
    e2e = {a: args.texts / statistics.median(walls[a][args.texts]) for a in arms}
    print(
        f"\nengine overhead at 1 worker (local 1 thread / ray 1 worker - 1): steady "
        f"{rate['local 1 thread'] / rate['ray 1 worker'] - 1:+.1%}, end to end {e2e['local 1 thread'] / e2e['ray 1 worker'] - 1:+.1%}"
    )
    print(
        f"scaling 1 -> 2 workers: steady {rate['ray 2 workers'] / rate['ray 1 worker']:.2f}x, "
        f"end to end {e2e['ray 2 workers'] / e2e['ray 1 worker']:.2f}x"
    )
    print(f"per-worker steady rate: {rate['ray 1 worker']:.1f} texts/s")
    if not identical:
        sys.exit("the engines wrote different caches")


if __name__ == "__main__":
    main()
