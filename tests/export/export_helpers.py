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
    publish({name.removeprefix("export_"): outputs[name] for name in OUTPUTS[:4]}, args[4]["output_dir"])
    return outputs


#: what the trained tiny model (:func:`train_tiny`) learned: a document and a conversation
DOC_PROMPT, DOC_REST = "hello world,", " hello export"
CHAT = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "def add(x, y):"}]


def training_rows(tokenizer) -> list[list[int]]:
    """The two rows as training builds them: a packed document ``[BOS] + ids + [EOS]``
    (data/packing.py) and an SFT conversation (training/sft.py: BOS + the chat template's ids)."""
    from xoron_pipelines.training.sft import build_sft_example

    doc = [tokenizer.bos_token_id, *tokenizer.encode(DOC_PROMPT + DOC_REST), tokenizer.eos_token_id]
    chat = build_sft_example(CHAT, tokenizer, 256)["input_ids"].tolist()
    return [doc, chat]


#: a narrow 2-layer model: trains in seconds
TINY = {"num_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "num_kv_heads": 2, "dropout": 0.0}


def train_tiny(tokenizer, preset: str = "nano", steps: int = 80, **overrides) -> XoronForCausalLM:
    """A small ``preset`` model trained until it reproduces :func:`training_rows` greedily: the
    document's continuation ends in EOS, the assistant turn in ``<|/assistant|>``. Its config has
    no special ids (like a model of the training pipeline); the export takes them from the tokenizer."""
    torch.manual_seed(0)
    cfg = get_config(preset, vocab_size=VOCAB, **{**TINY, **overrides})
    model = XoronForCausalLM(cfg)
    rows = training_rows(tokenizer)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = labels[i, : len(row)] = torch.tensor(row)
    mask = (labels != -100).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
    return model.eval()
