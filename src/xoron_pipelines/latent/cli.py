"""Generate text through the saved latent model: ``python -m xoron_pipelines.latent.cli "text"``.

Reads the final model of ``kedro run --pipeline latent`` (``data/06_models/latent/final`` by
default) and the decoder recorded in its config (or ``--decoder`` / ``--tokenizer``); sampling
defaults are those of ``conf/base/parameters_latent.yml`` (seed 004's inference parameters).
"""

from __future__ import annotations

import argparse
import sys

from xoron_pipelines.datasets.latent_model import LatentModelDataset, load_decoder
from xoron_pipelines.latent.inference import from_artifact, generate


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m xoron_pipelines.latent.cli", description=__doc__.splitlines()[0])
    ap.add_argument("text", nargs="+", help="input text(s); each is turned into latents and back into text")
    ap.add_argument("--model-dir", default="data/06_models/latent/final", help="a saved latent model directory")
    ap.add_argument("--decoder", help="decoder directory (default: the one the model was trained with)")
    ap.add_argument("--tokenizer", help="decoder tokenizer directory (default: with --decoder, the decoder's)")
    ap.add_argument("--max-generation-length", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--greedy", action="store_true", help="do_sample: false (argmax decoding)")
    ap.add_argument("--seed", type=int, default=None)
    return ap


def main(argv: list[str] | None = None) -> list[str]:
    args = parser().parse_args(argv)
    art = LatentModelDataset(args.model_dir).load()
    decoder = load_decoder(args.decoder, args.tokenizer) if args.decoder else None
    model, tokenizer = from_artifact(art, decoder)
    outputs = generate(
        model,
        tokenizer,
        args.text,
        max_generation_length=args.max_generation_length,
        do_sample=not args.greedy,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    for text in outputs:
        print(text)
    return outputs


if __name__ == "__main__":
    main(sys.argv[1:])
