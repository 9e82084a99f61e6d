"""Throughput and memory of a pretrain stage, and the pipeline's overhead over a bare training loop.

For each size (``nano``, ``tiny`` presets) a child process (so peak RSS is its own):

* **stage**: the ``train_causal_lm`` node of the training template on packed shards (random ids,
  ``seq_len`` per row) with MLflow tracking on (a temporary sqlite store) -- the engine, the
  per-step metric logging (MFU, expert load), the final checkpoint; tokens/s = tokens seen /
  wall time of the stage's training loop;
* **bare**: the same model, batches and AdamW (fused, as the engine builds it), in a plain
  ``forward -> backward -> step`` loop.

The two arms alternate for ``--rounds`` rounds from the same initial weights and the best round of
each is kept (the machine may be shared; the best round is the least disturbed one).

Overhead = 1 - stage tokens/s / bare tokens/s (target <= 5%). Usage::

    python benchmarks/train_stage.py                       # nano and tiny
    python benchmarks/train_stage.py --sizes nano --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

SETTINGS = {"nano": {"batch_size": 8, "seq_len": 256}, "tiny": {"batch_size": 4, "seq_len": 256}}


def _shards(path: Path, rows: int, seq_len: int, vocab: int):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xoron_pipelines.datasets.parquet_shards import ShardSet

    ids = np.random.default_rng(0).integers(3, vocab, size=(rows, seq_len), dtype=np.int32)
    path.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "input_ids": pa.array(ids.tolist(), pa.list_(pa.int32())),
                "length": pa.array(np.full(rows, seq_len, dtype=np.int32)),
            }
        ),
        path / "part-00000.parquet",
    )
    return ShardSet(path)


def _bare(model, source, steps: int, lr: float) -> float:
    """tokens/s of a plain loop over the same batches."""
    import torch

    from xoron_pipelines.training.optim import fused_supported

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=fused_supported([{"params": params}]) or None)
    model.train()
    start, tokens = time.perf_counter(), 0
    for step in range(steps):
        batch = source.batch(0, step % len(source))
        loss = model(**batch, return_logits=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += batch["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def run_one(size: str, steps: int, rounds: int) -> dict:
    import mlflow
    import torch

    from xoron_pipelines.datasets.parquet_shards import PackedMixes
    from xoron_pipelines.model import XoronForCausalLM, get_config
    from xoron_pipelines.pipelines.training.nodes import train_causal_lm
    from xoron_pipelines.training.stage_data import packed_source

    cfg = SETTINGS[size]
    config = get_config(size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        mlflow.set_experiment("bench")
        rows = cfg["batch_size"] * (steps + 2)
        train = _shards(tmp / "train", rows, cfg["seq_len"], config.vocab_size)
        val = _shards(tmp / "val", cfg["batch_size"], cfg["seq_len"], config.vocab_size)
        params = {
            "train": {
                "learning_rate": 1e-4,
                "max_steps": steps,
                "batch_size": cfg["batch_size"],
                "logging_steps": 5,
                "save_steps": 10_000,
                "seed": 0,
            },
            "eval": {"max_batches": 1},
            "tracking": {"enabled": True, "log_model": False, "log_tokenizer": False, "plots": False},
        }
        torch.manual_seed(0)
        model = XoronForCausalLM(config)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        source = packed_source(train.path, cfg["batch_size"], 0)
        stage_runs, bare_runs = [], []
        for round_ in range(rounds):  # alternated, best of each: robust to a machine shared with others
            model.load_state_dict(init)
            params["checkpoint_dir"] = str(tmp / f"ck{round_}")
            with mlflow.start_run(run_name="bench"):
                _, summary = train_causal_lm(
                    model, None, train, val, PackedMixes(tmp / "no-mixes"), params, stage=f"bench-{size}"
                )
            stage_runs.append(summary["tokens_seen"] / summary["wall_s"])
            model.load_state_dict(init)
            bare_runs.append(_bare(model, source, steps, 1e-4))
        stage_tps, bare_tps = max(stage_runs), max(bare_runs)
    return {
        "size": size,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "rounds": rounds,
        "batch": f"{cfg['batch_size']}x{cfg['seq_len']}",
        "stage_tokens_per_s": round(stage_tps, 1),
        "bare_tokens_per_s": round(bare_tps, 1),
        "overhead_pct": round(100 * (1 - stage_tps / bare_tps), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["nano", "tiny"], choices=sorted(SETTINGS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="alternated stage / bare rounds (best of each)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.rounds)))
        return
    rows = []
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", size, "--steps", str(args.steps), "--rounds", str(args.rounds)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
