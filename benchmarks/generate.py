"""Generation throughput and KV-cache size: our KV-cached ``generate`` vs the native class.

Throughput: the model is exported with :func:`xoron_pipelines.export.hf.export_hf` and the
directory is loaded back with ``AutoModelForCausalLM`` (LlamaForCausalLM / DeepseekV3ForCausalLM),
so both sides decode with the same weights. Both run greedy decoding of ``--new`` tokens after
a ``--prompt``-token prompt, batch ``--batch``, EOS disabled (always the full length), and
produce the same tokens (checked). Runs alternate A/B/B/A per round; the figure is the median
generated tokens/s.

KV cache: bytes per token over all layers at the same width (hidden, heads, head_dim, layers),
for MHA, GQA (kv_heads = heads/4) and MLA, from :func:`cache_bytes_per_token` and measured on a
real cache after a prefill (``KVCache.nbytes() / tokens``).

    python benchmarks/generate.py --rounds 3 --json /tmp/generate.json

Targets (issue): ours >= 1.0x the native class; MLA cache <= (kv_lora_rank + rope_dim) /
(2 x heads x head_dim) of MHA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from xoron_pipelines.data.tokenizer_training import train_bpe, wrap  # noqa: E402
from xoron_pipelines.export.hf import export_hf  # noqa: E402
from xoron_pipelines.model import XoronForCausalLM, cache_bytes_per_token  # noqa: E402
from xoron_pipelines.model.config import XoronConfig  # noqa: E402

BASE = dict(
    hidden_size=256,
    num_layers=4,
    num_heads=8,
    intermediate_size=1024,
    vocab_size=4096,
    max_position_embeddings=1024,
    rope_scaling=None,
    attention_chunk_size=None,
    dropout=0.0,
    initializer_range=0.2,
)
ARCHS = {
    "dense-mha": dict(BASE, attention_type="mha", use_moe=False, tie_word_embeddings=True),
    "mla-moe": dict(
        BASE,
        attention_type="mla",
        q_lora_rank=128,
        kv_lora_rank=64,
        qk_rope_head_dim=16,
        qk_nope_head_dim=16,
        v_head_dim=32,
        tie_word_embeddings=False,
        use_moe=True,
        num_experts=8,
        num_experts_per_tok=2,
        moe_layer_freq=1,
        first_k_dense_replace=1,
        num_shared_experts=1,
        moe_intermediate_size=256,
        router_scoring="sigmoid",
    ),
}


def _tokenizer():
    return wrap(train_bpe(["def f(x):\n    return x * 2\n", "hello world"] * 50, vocab_size=400))


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(name: str, args) -> dict:
    torch.manual_seed(0)
    tok = _tokenizer()
    ours = XoronForCausalLM(
        XoronConfig(
            **ARCHS[name], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        info = export_hf(ours, f"{tmp}/hf", tok)
        native = AutoModelForCausalLM.from_pretrained(f"{tmp}/hf").eval()
    prompt = torch.randint(
        10, ours.config.vocab_size, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1)
    )

    def run_ours():
        return ours.generate(prompt, max_new_tokens=args.new, eos_token_id=-1)

    def run_native():
        return native.generate(
            prompt, max_new_tokens=args.new, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id
        )

    with torch.no_grad():
        same = run_ours().tolist() == run_native().tolist()
        times = {"ours": [], "native": []}
        for _ in range(args.rounds):
            for side in ("ours", "native", "native", "ours"):
                times[side].append(_time(run_ours if side == "ours" else run_native))
    tokens = args.batch * args.new
    tps = {side: tokens / statistics.median(t) for side, t in times.items()}
    return {
        "arch": name,
        "native_class": info["architecture"],
        "same_tokens": same,
        "ours_tok_s": tps["ours"],
        "native_tok_s": tps["native"],
        "ratio": tps["ours"] / tps["native"],
    }


def cache_sizes(tokens: int = 64) -> dict:
    """Bytes/token (fp32) for MHA, GQA, MLA at hidden 1024, 16 heads x 64, 8 layers."""
    dims = dict(
        hidden_size=1024,
        num_layers=8,
        num_heads=16,
        intermediate_size=2048,
        vocab_size=512,
        max_position_embeddings=256,
        rope_scaling=None,
        attention_chunk_size=None,
        use_moe=False,
    )
    configs = {
        "mha": XoronConfig(**dims, attention_type="mha"),
        "gqa": XoronConfig(**dims, attention_type="gqa", num_kv_heads=4),
        "mla": XoronConfig(
            **dims,
            attention_type="mla",
            q_lora_rank=None,
            kv_lora_rank=128,
            qk_rope_head_dim=32,
            qk_nope_head_dim=32,
            v_head_dim=64,
        ),
    }
    out = {}
    ids = torch.randint(0, 512, (1, tokens))
    for name, cfg in configs.items():
        model = XoronForCausalLM(cfg).eval()
        with torch.no_grad():
            cache = model(ids, use_cache=True).past_key_values
        out[name] = {"formula": cache_bytes_per_token(cfg), "measured": cache.nbytes() / tokens}
    mla = configs["mla"]
    out["mla_over_mha"] = out["mla"]["measured"] / out["mha"]["measured"]
    out["target_ratio"] = (mla.kv_lora_rank + mla.qk_rope_head_dim) / (2 * mla.num_heads * 64)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--only", choices=sorted(ARCHS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed on a shared box)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        "settings": vars(args),
        "throughput": [],
        "kv_cache": cache_sizes(),
    }
    for name in [args.only] if args.only else ARCHS:
        row = throughput(name, args)
        result["throughput"].append(row)
        print(
            f"{name:10s} vs {row['native_class']:24s} ours {row['ours_tok_s']:7.1f} tok/s  native "
            f"{row['native_tok_s']:7.1f} tok/s  ratio {row['ratio']:.2f}x  same tokens: {row['same_tokens']}"
        )
    kv = result["kv_cache"]
    for name in ("mha", "gqa", "mla"):
        print(f"KV cache {name}: {kv[name]['measured']:.0f} B/token (formula {kv[name]['formula']})")
    print(f"MLA/MHA = {kv['mla_over_mha']:.4f} (target <= {kv['target_ratio']:.4f})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    sys.exit(main())
