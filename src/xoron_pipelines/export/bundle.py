"""Every requested format of one model, built for the export datasets.

:func:`export_model` checks all formats first (:func:`preflight`: a format that cannot represent
the architecture, e.g. PEER to GGUF, fails before anything is written), then builds each format in
one staging directory (``data/.staging/<run>`` during ``kedro run``, same filesystem as the
outputs) and returns them as :class:`~xoron_pipelines.datasets.export.ExportedArtifact` for the
catalog's ``export_hf`` / ``export_gguf`` / ``export_onnx`` / ``export_lora_adapter``
(:class:`~xoron_pipelines.datasets.export.ExportDirectoryDataset`), which publish them
atomically. If anything fails, the staged files are removed and nothing is published.

The LoRA format publishes the source stage's ``<stage>.lora_adapter`` (a
:class:`~xoron_pipelines.datasets.training_store.LoraAdapter`, loaded by the catalog) as it is.

``settings`` is the validated ``export`` parameter group (``pipelines/export/params.py``):
source, output_dir, formats, gguf_types, onnx_opset, onnx_int8, onnx_eval_rows,
onnx_eval_length, register_mlflow, registered_model_name, prefer_native, max_new_tokens, license.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from xoron_pipelines.atomic import atomic_dir, fresh_dir
from xoron_pipelines.datasets.export import ExportedArtifact
from xoron_pipelines.datasets.generation import staging_root
from xoron_pipelines.datasets.training_store import LoraAdapter
from xoron_pipelines.device import resolve_device
from xoron_pipelines.export import gguf_export, onnx_export
from xoron_pipelines.export.hf import export_hf
from xoron_pipelines.export.mlflow_registry import register_export

logger = logging.getLogger(__name__)

#: format -> its directory under export.output_dir (and its catalog entry export_<directory>)
FORMAT_DIRS = {"hf": "hf", "gguf": "gguf", "onnx": "onnx", "lora": "lora_adapter"}


def preflight(model, settings) -> None:
    """Raise ValueError naming every feature a requested format cannot represent."""
    problems = []
    if "gguf" in settings.formats:
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


def export_adapter(adapter: LoraAdapter | None, dest: Path, stage: str, recorded: str | None = None) -> dict[str, Any]:
    """Write the stage's peft adapter (its ``<stage>.lora_adapter``, saved by training before
    merging) to ``dest``, atomically. An empty adapter: the stage trained without LoRA, nothing is
    written -- unless its summary records one (``recorded``, the summary's ``lora_adapter``), then
    the adapter is missing (e.g. deleted since) and that is an error, as is one without
    ``adapter_config.json``."""
    adapter = adapter or LoraAdapter()
    where = adapter.path or f"{stage}.lora_adapter"
    if not adapter:
        if recorded:
            raise ValueError(
                f"the LoRA adapter of stage {stage} is missing: its summary records one ({recorded}) "
                f"but {where} is empty (re-run the stage)"
            )
        logger.info("stage %s trained without LoRA: no adapter to export", stage)
        return {"path": None, "reason": f"stage {stage} trained without LoRA"}
    if "adapter_config.json" not in adapter.files:
        raise ValueError(
            f"the LoRA adapter of stage {stage} at {where} has no adapter_config.json "
            f"(files: {sorted(adapter.files)}; re-run the stage)"
        )
    with atomic_dir(dest) as new:
        adapter.write_to(new)
    return {"path": str(dest), "merged": "hf"}


def export_model(
    model,
    tokenizer,
    packed_val,
    train_summary: Mapping[str, Any] | None,
    settings,
    adapter: LoraAdapter | None = None,
    data: Mapping[str, Any] | None = None,
    stages: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, float]], dict[str, ExportedArtifact]]:
    """Build the requested formats; returns (manifest, MLflow metrics as {name: {value, step}},
    {directory name: artefact} for every entry of :data:`FORMAT_DIRS`). Paths in the manifest
    are the published ones, ``<settings.output_dir>/<directory>``. ``adapter``: the source
    stage's ``<stage>.lora_adapter`` (None or empty: it trained without LoRA), for ``lora``.
    ``data`` (data_processing's packing manifest) and ``stages`` ({stage: train summary} of the
    stages up to the source) go into the model card."""
    p = settings
    preflight(model, p)
    out = Path(p.output_dir)
    built = fresh_dir(staging_root(), "xoron-export-")
    card = {"data": data, "stages": stages}
    try:
        manifest, metrics = _build(
            model, tokenizer, packed_val, dict(train_summary or {}), adapter, p, built, out, card
        )
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    artefacts = {}
    for fmt, name in FORMAT_DIRS.items():
        staged = built / name
        artefacts[name] = (
            ExportedArtifact(staged, target=out / name)
            if staged.is_dir()
            else ExportedArtifact(
                None, reason="not in export.formats" if fmt not in p.formats else manifest["formats"][fmt].get("reason")
            )
        )
    logger.info("exported stage %s: %s", p.source, sorted(manifest["formats"]))
    return manifest, {k: {"value": v, "step": 0} for k, v in metrics.items()}, artefacts


def _build(
    model,
    tokenizer,
    packed_val,
    summary: dict[str, Any],
    adapter: LoraAdapter | None,
    p,
    built: Path,
    out: Path,
    card: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float]]:
    manifest: dict[str, Any] = {"source": p.source, "formats": {}}
    metrics: dict[str, float] = {}
    if "hf" in p.formats:
        info = export_hf(
            model,
            built / "hf",
            tokenizer,
            stage=p.source,
            summary=summary,
            prefer_native=p.prefer_native,
            max_new_tokens=p.max_new_tokens,
            license=p.license,
            **card,
        )
        manifest["formats"]["hf"] = {**info, "path": str(out / "hf")}
    if "gguf" in p.formats:
        files = [
            gguf_export.export_gguf(model, built / "gguf" / f"model-{q}.gguf", tokenizer, q, name=f"xoron-{p.source}")
            for q in p.gguf_types
        ]
        manifest["formats"]["gguf"] = [{**f, "path": str(out / "gguf" / Path(f["path"]).name)} for f in files]
    if "onnx" in p.formats:
        ids = eval_ids(packed_val, p.onnx_eval_rows, p.onnx_eval_length, model.config.vocab_size)
        device = resolve_device(p.device, "export.device")
        report = onnx_export.export_onnx_all(model, built / "onnx", ids, p.onnx_opset, p.onnx_int8, device=device)
        manifest["formats"]["onnx"] = report
        metrics["onnx_max_abs_diff"] = report["fp32"]["max_abs_diff"]
        if "int8" in report:
            metrics["onnx_int8_top1_agreement"] = report["int8"]["top1_agreement"]
            metrics["onnx_int8_mean_kl"] = report["int8"]["mean_kl"]
    if "lora" in p.formats:
        info = export_adapter(adapter, built / "lora_adapter", p.source, summary.get("lora_adapter"))
        manifest["formats"]["lora"] = {**info, "path": str(out / "lora_adapter")} if info["path"] else info
    if p.register_mlflow:  # the staged directory holds exactly what export_hf publishes
        manifest["mlflow"] = register_export(built / "hf", p.registered_model_name)
    return manifest, metrics


__all__ = ["FORMAT_DIRS", "eval_ids", "export_adapter", "export_model", "preflight"]
