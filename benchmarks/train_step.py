"""Training-step throughput: XoronForCausalLM against the native transformers class.

For each architecture the native model is built by :func:`xoron_pipelines.model.interop.to_native_model`,
so both sides have identical dimensions and identical initial weights, and both see the same
batches. One step = forward with labels (loss) + backward + ``torch.optim.AdamW.step()`` +
``zero_grad``; our side also runs ``update_moe_bias()`` when it has MoE layers, since that is
part of its training step. Both sides use the same AdamW: by default its fused kernel, which is
what xoron's trainer builds (training/optim.py); ``--adamw foreach`` times torch's multi-tensor
default instead (shared cost, so it lowers the ratio). Runs are interleaved A/B/B/A per round
so drift (thermal, other load) hits both sides alike; the reported figure is the ratio of the
median tokens/s over rounds. Also printed: the median of the per-round ratios of adjacent runs
(cancels drift between rounds) and the best-of-rounds ratio (on a shared machine the least
disturbed estimate).

    python benchmarks/train_step.py                 # both pairs, defaults below
    python benchmarks/train_step.py --only dense --rounds 6 --json out.json

Targets (issue): ours >= 1.3x DeepseekV3ForCausalLM for MoE+MLA, >= 1.0x LlamaForCausalLM for dense.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from xoron_pipelines.model.config import XoronConfig  # noqa: E402
from xoron_pipelines.model.interop import to_native_model  # noqa: E402
from xoron_pipelines.model.model import XoronForCausalLM  # noqa: E402

# Dense: the "tiny" size of seed 001 (hidden 256, 4 layers) with a Llama-like layout.
DENSE = dict(
    hidden_size=256,
    num_layers=4,
    num_heads=4,
    intermediate_size=1024,
    vocab_size=32000,
    max_position_embeddings=512,
    attention_type="mha",
    use_moe=False,
    rope_scaling=None,
    attention_chunk_size=None,
    tie_word_embeddings=True,
    dropout=0.0,
)
# MoE + MLA at the same width: DeepSeek-V3 layout (first layer dense, then MoE everywhere).
MOE_MLA = dict(
    hidden_size=256,
    num_layers=4,
    num_heads=4,
    intermediate_size=1024,
    vocab_size=32000,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    dropout=0.0,
    attention_type="mla",
    q_lora_rank=128,
    kv_lora_rank=64,
    qk_rope_head_dim=32,
    qk_nope_head_dim=32,
    v_head_dim=64,
    attention_chunk_size=None,
    rope_scaling=None,
    use_moe=True,
    num_experts=8,
    num_experts_per_tok=2,
    moe_layer_freq=1,
    first_k_dense_replace=1,
    num_shared_experts=1,
    moe_intermediate_size=256,
    router_scoring="sigmoid",
    bias_update_rate=1e-3,
    aux_loss_coef=0.0,
)
PAIRS = {"dense": (DENSE, 1.0), "moe_mla": (MOE_MLA, 1.3)}


def make_batches(vocab: int, batch: int, seq: int, count: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=gen) for _ in range(count)]


class Runner:
    """One model + its AdamW; ``run(batches)`` returns the seconds the training steps took.

    ``precision="bf16"`` runs forward and loss under ``torch.autocast(bfloat16)`` with fp32
    weights and optimizer state (what the trainer's bf16 does); the model is moved to ``device``.
    """

    def __init__(
        self, model: torch.nn.Module, ours: bool, adamw: str = "fused", device: str = "cpu", precision: str = "fp32"
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).train()
        self.ours = ours
        self.precision = precision
        self.has_moe = ours and hasattr(model, "update_moe_bias") and model.config.use_moe
        impl = {"fused": True} if adamw == "fused" else {"foreach": True}
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, **impl)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        # Our training path asks for the loss only (no logits tensor), as the trainer does.
        extra = {"return_logits": False} if self.ours else {}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = self.model(input_ids=ids, labels=ids, **extra).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.has_moe:
            self.model.update_moe_bias()
        return loss.detach()

    def run(self, batches: list[torch.Tensor]) -> float:
        batches = [ids.to(self.device) for ids in batches]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for ids in batches:
            self.step(ids)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def bench_pair(name: str, fields: dict, args) -> dict:
    torch.manual_seed(0)
    ours = XoronForCausalLM(XoronConfig(**fields)).float()
    native = to_native_model(ours)
    device, precision = getattr(args, "device", "cpu"), getattr(args, "precision", "fp32")
    runners = {
        "xoron": Runner(ours, True, args.adamw, device, precision),
        type(native).__name__: Runner(native, False, args.adamw, device, precision),
    }
    batches = make_batches(fields["vocab_size"], args.batch, args.seq, args.steps, seed=1)
    tokens = args.batch * args.seq * args.steps
    for runner in runners.values():  # warm-up (allocator, first-call paths)
        runner.run(batches[: args.warmup])
    names = list(runners)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            rates[n].append(tokens / runners[n].run(batches))
    med = {n: statistics.median(v) for n, v in rates.items()}
    best = {n: max(v) for n, v in rates.items()}
    native_name = names[1]
    return {
        "pair": name,
        "native": native_name,
        "experts_implementation": getattr(native.config, "_experts_implementation", None),
        "attn_implementation": native.config._attn_implementation,
        "tokens_per_s": med,
        "all_rounds": rates,
        "ratio": med["xoron"] / med[native_name],
        "ratio_best": best["xoron"] / best[native_name],
        "ratio_paired": statistics.median(a / b for a, b in zip(rates["xoron"], rates[native_name])),
        "params": sum(p.numel() for p in ours.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(PAIRS), action="append")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4, help="A/B runs per model (interleaved)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--adamw",
        choices=("fused", "foreach"),
        default="fused",
        help="AdamW implementation, the same on both sides (fused = what the trainer runs)",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (both models and batches)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast, fp32 weights (both sides)"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"batch {args.batch} x seq {args.seq}, {args.steps} steps/run, {args.rounds} rounds, {args.adamw} AdamW, "
        f"{args.device} {args.precision}"
    )
    results = []
    for name in args.only or list(PAIRS):
        fields, target = PAIRS[name]
        res = bench_pair(name, fields, args)
        res["target"] = target
        res["meets_target"] = res["ratio"] >= target
        results.append(res)
        native = res["native"]
        print(
            f"{name:8s} params {res['params'] / 1e6:6.2f}M  xoron {res['tokens_per_s']['xoron']:8.1f} tok/s  "
            f"{native} {res['tokens_per_s'][native]:8.1f} tok/s  ratio {res['ratio']:.2f}x "
            f"(paired per-round median {res['ratio_paired']:.2f}x, best-of-rounds {res['ratio_best']:.2f}x; "
            f"target >= {target}x: "
            f"{'met' if res['meets_target'] else 'MISSED'})"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
