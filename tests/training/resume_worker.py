"""Subprocess for tests/training/test_resume.py: one fixed training run, optionally killed.

``python resume_worker.py CKPT_DIR OUT_FILE`` trains TinyLM (CPU, deterministic) and writes the
final weights to OUT_FILE (safetensors). ``XORON_TEST_KILL`` makes the process SIGKILL itself:

* ``forward:N``     — at the N-th training forward (N even: the 2nd micro-batch of a step, after
  the 1st one's backward, i.e. with gradients half accumulated);
* ``after_save:S``  — right after checkpoint-S has been renamed into place;
* ``during_save:S`` — while checkpoint-S is being written (files written, manifest not yet).

The same command without the variable resumes from the newest valid checkpoint.
"""

import logging
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_lm import TinyLM  # noqa: E402

from xoron_pipelines.training import TensorBatchSource, TrainConfig, checkpoint, train  # noqa: E402

CFG = dict(
    max_steps=10,
    batch_size=4,
    gradient_accumulation_steps=2,
    learning_rate=3e-2,
    warmup_steps=2,
    lr_scheduler="cosine",
    max_grad_norm=0.5,
    save_steps=2,
    keep_last_k=2,
    eval_steps=3,
    deterministic=True,
    seed=123,
    logging_steps=1,
)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillingLM(TinyLM):
    """TinyLM that kills the process at its ``kill_at``-th training forward."""

    def __init__(self, kill_at: int) -> None:
        super().__init__()
        self.kill_at, self.forwards = kill_at, 0

    def forward(self, *args, **kwargs):
        if self.training:
            self.forwards += 1
            if self.forwards == self.kill_at:
                _die()
        return super().forward(*args, **kwargs)


def install_kill(spec: str) -> int | None:
    kind, _, value = spec.partition(":")
    n = int(value)
    if kind == "forward":
        return n
    if kind == "after_save":
        orig = checkpoint.write_checkpoint

        def write_then_die(root, snap):
            path = orig(root, snap)
            if snap.step == n:
                _die()
            return path

        checkpoint.write_checkpoint = write_then_die
    elif kind == "during_save":
        orig_files = checkpoint._write_files

        def files_then_die(tmp, snap):
            names = orig_files(tmp, snap)
            if snap.step == n:
                _die()
            return names

        checkpoint._write_files = files_then_die
    else:
        raise SystemExit(f"bad XORON_TEST_KILL {spec!r}")
    return None


def main() -> None:
    ckpt_dir, out_file = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asynchronous = os.environ.get("XORON_TEST_ASYNC") == "1"
    torch.set_num_threads(1)
    spec = os.environ.get("XORON_TEST_KILL")
    kill_forward = install_kill(spec) if spec else None
    rows = torch.randint(0, 32, (40, 16), generator=torch.Generator().manual_seed(7))
    source = TensorBatchSource(rows, batch_size=4, seed=5)
    torch.manual_seed(0)
    model = TinyLM() if kill_forward is None else KillingLM(kill_forward)
    held_out = {"input_ids": rows[:4].long(), "labels": rows[:4].long()}

    def eval_fn(m):  # consumes the RNG too, so its state at save time matters
        return float(m(**held_out).loss) + 1e-3 * float(torch.rand(()))

    cfg = TrainConfig(**CFG, async_checkpointing=asynchronous)
    train(model, source, cfg, ckpt_dir=ckpt_dir, eval_fn=eval_fn, progress=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_file)


if __name__ == "__main__":
    main()
