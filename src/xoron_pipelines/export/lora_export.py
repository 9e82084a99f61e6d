"""LoRA adapters: peft's own format next to the merged model.

``export_lora`` writes the adapter directory with ``PeftModel.save_pretrained``
(``adapter_config.json`` + ``adapter_model.safetensors``; loads back with
``peft.PeftModel.from_pretrained(base_model, path)``) and the merged weights as a full Hugging
Face directory through :func:`xoron_pipelines.export.hf.export_hf` (adapters folded in with
``merge_and_unload`` on a copy, so the caller's adapted model is left untouched).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

from peft import PeftModel

from xoron_pipelines.atomic import atomic_dir
from xoron_pipelines.export.hf import export_hf

logger = logging.getLogger(__name__)


def save_adapter(peft_model: PeftModel, path: str | os.PathLike) -> Path:
    """peft adapter directory (safetensors) at ``path``, written atomically."""
    if not isinstance(peft_model, PeftModel):
        raise ValueError(f"LoRA export needs a peft.PeftModel with adapters, got {type(peft_model).__name__}")
    path = Path(path)
    with atomic_dir(path) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
    return path


def export_lora(
    peft_model: PeftModel,
    out_dir: str | os.PathLike,
    tokenizer,
    stage: str = "final",
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``<out_dir>/adapter`` (peft format) and ``<out_dir>/merged`` (HF directory)."""
    out_dir = Path(out_dir)
    adapter = save_adapter(peft_model, out_dir / "adapter")
    merged = copy.deepcopy(peft_model).merge_and_unload()
    info = export_hf(merged, out_dir / "merged", tokenizer, stage=stage, summary=summary)
    logger.info("wrote LoRA adapter to %s and merged model to %s", adapter, info["path"])
    return {"adapter": str(adapter), "merged": info}


__all__ = ["export_lora", "save_adapter"]
