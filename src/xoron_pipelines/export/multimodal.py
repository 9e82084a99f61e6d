"""Save and load the multimodal model (:class:`~xoron_pipelines.model.multimodal.XoronMultimodalModel`).

``save_multimodal(model, tokenizer, dir)`` writes, atomically (the directory appears complete or
not at all, a previous one stays intact on failure):

* ``model.safetensors``: every weight of the model (LLM, encoders, projectors, fusion); a tied
  weight is stored once (``config.json`` lists its aliases). Safetensors only, never pickle.
* ``config.json``: ``multimodal`` (the full :class:`MultimodalConfig`, every encoder sub-config
  included), ``llm_config`` (the LLM's ``XoronConfig``), ``media_token_ids`` (the marker ids),
  ``tied`` and the format version.
* the tokenizer (``tokenizer.json`` ...), as given;
* ``llm/``: the LLM alone through the text export (:func:`xoron_pipelines.export.hf.export_hf`):
  a native transformers class where the architecture has one (``AutoModelForCausalLM.from_pretrained``
  loads it), else our config; with its model card and generation config;
* ``vision_model/``: when the vision encoder wraps a local Hugging Face model
  (``vision_model_name``), that tower with its trained weights, saved so
  ``AutoModel.from_pretrained`` loads it (its ``preprocessor_config.json`` copied along); the
  saved config points ``vision_model_name`` there, so the directory is self-contained.

``load_multimodal(dir)`` rebuilds the model from ``config.json`` and loads ``model.safetensors``
(strictly: every weight present, none unknown), on the CPU and unplaced (``use_model_parallel``
off: place it again with a config of your own), in eval mode, with the LLM's generation config
from ``llm/`` (so ``generate`` stops where the text export does). A LoRA-wrapped LLM is refused by
the save: merge the adapters first (``model.merge_lora()``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GenerationConfig

from xoron_pipelines.atomic import atomic_dir
from xoron_pipelines.export.hf import export_hf
from xoron_pipelines.model import XoronConfig, XoronForCausalLM
from xoron_pipelines.model.multimodal import MultimodalConfig, XoronMultimodalModel, base_llm

log = logging.getLogger(__name__)

FORMAT = "xoron-multimodal"
VERSION = 1
WEIGHTS = "model.safetensors"
LLM_DIR = "llm"
VISION_DIR = "vision_model"


def _unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict on the CPU with each shared tensor once, {alias: kept name})."""
    state, tied, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        state[name] = tensor.detach().to("cpu").contiguous()
    return state, tied


def _save_vision_tower(encoder: nn.Module, source: str, out: Path) -> None:
    """Save the encoder's HF tower (trained weights) as a model ``AutoModel`` loads."""
    from transformers import AutoModel

    tower = encoder.tower
    wrapper = AutoModel.from_config(tower.config)
    target = getattr(wrapper, "vision_model", wrapper)
    missing, unexpected = target.load_state_dict(tower.state_dict(), strict=False)
    dropped = [k for k in missing if not k.startswith("head.")]  # SigLIP's pooling head is not used
    if dropped or unexpected:
        raise ValueError(
            f"cannot save the vision tower as {type(wrapper).__name__}: missing {dropped}, unexpected {unexpected}"
        )
    wrapper.save_pretrained(out, safe_serialization=True)
    pre = Path(source).expanduser() / "preprocessor_config.json"
    if pre.is_file():
        shutil.copy2(pre, out / pre.name)


def save_multimodal(model: XoronMultimodalModel, tokenizer, path: str | os.PathLike, stage: str = "multimodal") -> Path:
    """Write ``model`` and ``tokenizer`` to the directory ``path`` (see the module docstring)."""
    if base_llm(model.llm) is not model.llm:
        raise ValueError("save_multimodal: the LLM is LoRA-wrapped; merge the adapters first (model.merge_lora())")
    path = Path(path)
    cfg = model.config
    state, tied = _unique_state(model)
    multimodal = cfg.model_dump(mode="json")
    vision_saved = "image" in cfg.modalities and bool(cfg.vision.vision_model_name)
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if vision_saved:
            _save_vision_tower(model.encoders["image"], cfg.vision.vision_model_name, tmp / VISION_DIR)
            multimodal["vision"]["vision_model_name"] = VISION_DIR  # relative to the directory
        meta: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "multimodal": multimodal,
            "llm_config": model.llm.config.to_dict(),
            "media_token_ids": {m: list(ids) for m, ids in model.media_token_ids.items()},
            "tied": tied,
            "llm_dir": LLM_DIR,
            "vision_model_dir": VISION_DIR if vision_saved else None,
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        tokenizer.save_pretrained(tmp)
        export_hf(model.llm, tmp / LLM_DIR, tokenizer, stage=stage)
    log.info("saved the multimodal model (%s) to %s", ", ".join(cfg.modalities), path)
    return path


def load_multimodal(path: str | os.PathLike) -> XoronMultimodalModel:
    """The model :func:`save_multimodal` wrote at ``path`` (CPU, unplaced, eval mode)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (not a save_multimodal directory)")
    meta = json.loads(config_file.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{config_file}: format {meta.get('format')!r} version {meta.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    multimodal = dict(meta["multimodal"])
    multimodal.update(use_model_parallel=False, device_map=None)
    if meta.get("vision_model_dir"):
        multimodal["vision"] = {**multimodal["vision"], "vision_model_name": str(path / meta["vision_model_dir"])}
    config = MultimodalConfig.model_validate(multimodal)
    llm = XoronForCausalLM(XoronConfig.from_dict(meta["llm_config"]))
    model = XoronMultimodalModel(config, llm, media_token_ids=meta["media_token_ids"])
    state = load_file(str(path / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = meta.get("tied", {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS} does not match the model: missing {missing}, unexpected {unexpected}")
    llm_dir = path / meta.get("llm_dir", LLM_DIR)
    if (llm_dir / "generation_config.json").is_file():  # generate()'s defaults: stop ids, max_new_tokens
        llm.generation_config = GenerationConfig.from_pretrained(llm_dir)
    return model.eval()


__all__ = ["load_multimodal", "save_multimodal"]
