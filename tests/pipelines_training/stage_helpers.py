"""Small inputs for calling the stage nodes directly: packed shards, chat rows, preference rows,
stage parameters with tracking off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xoron_pipelines.datasets.parquet_shards import ShardSet


def packed_shards(path: Path, rows: int, seq_len: int = 32, vocab: int = 512, seed: int = 0) -> ShardSet:
    """A shard set of ``rows`` rows: a repeating pattern with noise (learnable), 4 pad ids at the end."""
    rng = np.random.default_rng(seed)
    base = (np.arange(seq_len)[None, :] * 7 + rng.integers(0, 50, size=(rows, 1))) % (vocab - 3) + 3
    ids = np.where(rng.random((rows, seq_len)) < 0.1, rng.integers(3, vocab, size=(rows, seq_len)), base)
    lengths = np.full(rows, seq_len - 4, dtype=np.int32)
    ids[:, seq_len - 4 :] = 2
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"input_ids": pa.array(ids.astype(np.int32).tolist(), pa.list_(pa.int32())), "length": pa.array(lengths)}
    )
    pq.write_table(table, path / "part-00000.parquet")
    return ShardSet(path)


def chat_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus two?"},
                    {"role": "assistant", "content": f"<|tool_call|>add({i}, 2)<|/tool_call|> The answer is {i + 2}."},
                ]
            }
        )
    return rows


def preference_rows(n: int) -> list[dict]:
    return [
        {
            "prompt": f"What is {i} plus two?",
            "chosen": f"The answer is {i + 2}.",
            "rejected": f"The answer is {i + 5}, not sure.",
        }
        for i in range(n)
    ]


def stage(ckpt: Path, **overrides: Any) -> dict[str, Any]:
    """Stage parameters (a plain dict, as Kedro passes them) with tracking off."""
    train = {
        "learning_rate": 1e-3,
        "max_steps": 3,
        "batch_size": 4,
        "logging_steps": 1,
        "save_steps": 100,
        "seed": 0,
        **overrides.pop("train", {}),
    }
    return {
        "train": train,
        "checkpoint_dir": str(ckpt),
        "tracking": {"enabled": False},
        "eval": {"max_batches": 2, "val_fraction": 0.2},
        **overrides,
    }
