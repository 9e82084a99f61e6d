"""Export node: the source stage's model to every requested format under ``output_dir``.

All formats are checked before anything is written: a format that cannot represent the
architecture (e.g. PEER to GGUF) fails the node with the unsupported features named, and no
file of this run is left behind (each format is written atomically, a previous export stays).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from xoron_pipelines.export import gguf_export, onnx_export
from xoron_pipelines.atomic import atomic_dir
from xoron_pipelines.export.hf import export_hf
from xoron_pipelines.export.mlflow_registry import register_export

from .params import STAGES, Params

logger = logging.getLogger(__name__)


def preflight(model, params: Params) -> None:
    """Raise ValueError naming every feature a requested format cannot represent."""
    problems = []
    if "gguf" in params.formats:
        problems += [f"gguf: {p}" for p in gguf_export.unsupported_features(model.config)]
    if problems:
        raise ValueError("export refused before writing anything: " + "; ".join(problems))


def eval_ids(packed_val, rows: int, length: int, vocab: int) -> torch.Tensor:
    """Held-out token ids (rows x length) from packed_val for the int8 accuracy figures."""
    table = packed_val.read(columns=["input_ids"]).slice(0, rows)
    seqs = [list(r)[:length] for r in table.column("input_ids").to_pylist()]
    seqs = [s for s in seqs if len(s) == length]
    if not seqs:
        raise ValueError(f"packed_val has no row of {length} tokens for the ONNX int8 evaluation")
    return torch.tensor(seqs, dtype=torch.long).clamp(max=vocab - 1)


def export_adapter(adapter_dir: str | None, dest: Path, stage: str) -> dict[str, Any]:
    """Copy the stage's peft adapter (saved by training before merging) to ``dest``, atomically."""
    if not adapter_dir:
        logger.info("stage %s trained without LoRA: no adapter to export", stage)
        return {"path": None, "reason": f"stage {stage} trained without LoRA"}
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ValueError(f"the LoRA adapter of stage {stage} is missing at {adapter_dir} (re-run the stage)")
    with atomic_dir(dest) as tmp:
        shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
    return {"path": str(dest), "merged": "hf"}


def export_stage(stage_models, tokenizer, packed_val, params: Mapping[str, Any],
                 *train_summaries: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pipeline node: exports ``stage_models[params.source]``. ``train_summaries`` are every
    stage's ``<stage>.train_summary`` in :data:`STAGES` order (inputs so that the node runs after
    training); the source stage's goes into the model card."""
    source = Params.model_validate(params).source
    summaries = dict(zip(STAGES, train_summaries))
    return export_model(stage_models[source], tokenizer, packed_val, summaries.get(source), params)


def export_model(model, tokenizer, packed_val, train_summary: Mapping[str, Any] | None,
                 params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the requested formats; returns (manifest, MLflow metrics as {name: {value, step}})."""
    p = Params.model_validate(params)
    preflight(model, p)
    out = Path(p.output_dir)
    manifest: dict[str, Any] = {"source": p.source, "formats": {}}
    metrics: dict[str, float] = {}
    summary = dict(train_summary or {})
    if "hf" in p.formats:
        manifest["formats"]["hf"] = export_hf(model, out / "hf", tokenizer, stage=p.source, summary=summary,
                                              prefer_native=p.prefer_native)
    if "gguf" in p.formats:
        manifest["formats"]["gguf"] = [
            gguf_export.export_gguf(model, out / "gguf" / f"model-{q}.gguf", tokenizer, q, name=f"xoron-{p.source}")
            for q in p.gguf_types]
    if "onnx" in p.formats:
        ids = eval_ids(packed_val, p.onnx_eval_rows, p.onnx_eval_length, model.config.vocab_size)
        report = onnx_export.export_onnx_all(model, out / "onnx", ids, p.onnx_opset, p.onnx_int8)
        manifest["formats"]["onnx"] = report
        metrics["onnx_max_abs_diff"] = report["fp32"]["max_abs_diff"]
        if "int8" in report:
            metrics["onnx_int8_top1_agreement"] = report["int8"]["top1_agreement"]
            metrics["onnx_int8_mean_kl"] = report["int8"]["mean_kl"]
    if "lora" in p.formats:
        manifest["formats"]["lora"] = export_adapter(summary.get("lora_adapter"), out / "lora_adapter", p.source)
    if p.register_mlflow:
        manifest["mlflow"] = register_export(out / "hf", p.registered_model_name)
    logger.info("exported stage %s: %s", p.source, sorted(manifest["formats"]))
    return manifest, {k: {"value": v, "step": 0} for k, v in metrics.items()}
