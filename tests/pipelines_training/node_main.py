"""One "node" of a 2-node stage run, as a separate process (``python -m`` this module with a JSON
argument): it calls the causal-LM stage node with its ``node_rank`` and writes the returned weights
and summary, so the test can compare both nodes with a 1-process run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from tests.pipelines_training.stage_helpers import stage
from tests.training.finetune_helpers import nano_model
from xoron_pipelines.datasets.parquet_shards import PackedMixes, ShardSet
from xoron_pipelines.pipelines.training import nodes


def main(argv: list[str]) -> None:
    args = json.loads(argv[0])
    shards = ShardSet(args["train"]), ShardSet(args["val"]), PackedMixes(Path(args["train"]).parent / "no-mixes")
    params = stage(Path(args["ckpt"]), train=args["train_params"], eval=args["eval"], distributed=args["distributed"])
    model, summary = nodes.train_causal_lm(nano_model(args["preset"]), None, *shards, params, stage="lm")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args["out"] + ".safetensors")
    Path(args["out"] + ".json").write_text(json.dumps(summary, default=str))


if __name__ == "__main__":  # the spawned workers import this module again: only the node runs main
    main(sys.argv[1:])
