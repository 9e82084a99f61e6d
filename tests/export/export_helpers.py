"""Helpers of the export tests: a real byte-level BPE tokenizer and tiny models."""

from __future__ import annotations

import torch

from xoron_pipelines.data.tokenizer_training import train_bpe, wrap
from xoron_pipelines.model import XoronForCausalLM, get_config

TEXTS = [
    "def add(x, y):\n    return x + y\n",
    "The quick brown fox jumps over the lazy dog.",
    "hello world, hello export",
    "for i in range(10):\n    print(i * i)\n",
] * 50
VOCAB = 512


def build_tokenizer():
    tok = wrap(train_bpe(TEXTS, vocab_size=480))
    assert len(tok) <= VOCAB
    return tok


def make_model(preset: str, tokenizer, seed: int = 0, **overrides) -> XoronForCausalLM:
    """A randomly initialised ``preset`` model with the tokenizer's special ids (larger init so
    greedy decoding does not repeat one token)."""
    torch.manual_seed(seed)
    cfg = get_config(
        preset,
        vocab_size=VOCAB,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    model = XoronForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms and selection bias, so mapping mistakes show
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.add_(0.1 * torch.randn_like(param))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias") and cfg.router_scoring == "sigmoid":
                buf.copy_(0.05 * torch.randn_like(buf))
    return model


def publish(artefacts, out_dir) -> None:
    """Save ``{directory name: ExportedArtifact}`` through ExportDirectoryDataset under ``out_dir``,
    as the catalog's export_* entries do in a ``kedro run``."""
    from pathlib import Path

    from xoron_pipelines.datasets.export import ExportDirectoryDataset

    for name, artefact in artefacts.items():
        ExportDirectoryDataset(str(Path(out_dir) / name)).save(artefact)


def run_export(model, tokenizer, packed_val, summary, params, adapter=None):
    """The library export of ``model`` with ``params`` (validated) and the stage's LoRA
    ``adapter``, published under ``params["output_dir"]``; returns (manifest, metrics)."""
    from xoron_pipelines.export.bundle import export_model
    from xoron_pipelines.pipelines.export.params import Params

    p = Params.model_validate(params)
    manifest, metrics, artefacts = export_model(model, tokenizer, packed_val, summary, p, adapter)
    publish(artefacts, p.output_dir)
    return manifest, metrics


def run_export_node(*args):
    """The export node ``export_stage(*args)``, its format outputs published under the params'
    output_dir; returns {output name: value}."""
    from xoron_pipelines.pipelines.export.nodes import OUTPUTS, export_stage

    outputs = dict(zip(OUTPUTS, export_stage(*args)))
    publish({name.removeprefix("export_"): outputs[name] for name in OUTPUTS[:4]}, args[3]["output_dir"])
    return outputs
