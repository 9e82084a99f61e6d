"""Hugging Face directory export: weights, config, tokenizer, generation config, model card.

Where the architecture maps to a native transformers class (see
:mod:`xoron_pipelines.model.interop`: dense -> Llama/Mistral, MLA -> DeepseekV3, MoE ->
Glm4Moe/Qwen2Moe) the directory loads with ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` offline and without ``trust_remote_code``. Other
architectures (PEER, LayerNorm, learned positions) are saved with our own config
(``model_type: "xoron"``) and the card says why and how to load them.

The directory is built in a temporary sibling and renamed into place: a failed export leaves
no partial directory and keeps a previous export intact.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers import GenerationConfig

from xoron_pipelines.atomic import atomic_dir
from xoron_pipelines.model import count_parameters, interop

logger = logging.getLogger(__name__)

_CARD = """---
library_name: transformers
pipeline_tag: text-generation
tags: [xoron-pipelines]
---
# Xoron model ({stage} stage)

Exported by xoron-pipelines from the `{stage}` stage.

- **Format**: {fmt}
- **Architecture**: `{arch}` ({attention} attention{moe})
- **Parameters**: {params:,}
- **Vocabulary**: {vocab} tokens, context {ctx}
{load}
## Training summary

{summary}
"""

_NATIVE_LOAD = """
Loads with plain transformers (no remote code):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{name}")
tokenizer = AutoTokenizer.from_pretrained("{name}")
```
"""

_XORON_LOAD = """
No native transformers class can represent this model exactly, so it is saved with its own
config (`model_type: "xoron"`):

{reasons}

Load it with the xoron_pipelines package (no remote code):

```python
import xoron_pipelines.model  # registers model_type "xoron" with the Auto classes
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{name}")
```
"""


def _summary_text(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "(no training summary recorded)"
    return "\n".join(f"- **{k}**: {v}" for k, v in summary.items())


def model_card(model, name: str, written: dict[str, Any], stage: str, summary: dict[str, Any] | None) -> str:
    """README.md text: format, architecture, size, how to load, training summary."""
    cfg = model.config
    if written["format"] == "native":
        load = _NATIVE_LOAD.format(name=name)
    else:
        load = _XORON_LOAD.format(name=name, reasons="\n".join(f"- {r}" for r in written["unsupported"]))
    moe = f", MoE {cfg.num_experts} experts top-{cfg.num_experts_per_tok}" if cfg.use_moe else ""
    moe += ", PEER" if cfg.use_peer else ""
    return _CARD.format(
        name=name,
        stage=stage,
        fmt="native transformers" if written["format"] == "native" else "xoron",
        arch=written["architecture"],
        attention=cfg.attention_type.upper(),
        moe=moe,
        params=count_parameters(cfg)["total"],
        vocab=cfg.vocab_size,
        ctx=cfg.max_position_embeddings,
        load=load,
        summary=_summary_text(summary),
    )


def generation_config(config, max_new_tokens: int = 256) -> GenerationConfig:
    """Greedy decoding defaults with our special token ids."""
    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=False,
        max_new_tokens=max_new_tokens,
    )


def export_hf(
    model,
    path: str | os.PathLike,
    tokenizer,
    stage: str = "final",
    summary: dict[str, Any] | None = None,
    prefer_native: bool = True,
    max_new_tokens: int = 256,
) -> dict[str, Any]:
    """Write the Hugging Face directory at ``path`` (atomic). Returns format/architecture/reasons.
    ``max_new_tokens`` is generation_config.json's default (what ``model.generate`` uses when the
    caller gives none)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        inner = tmp / "model"
        written = interop.export(model, inner, tokenizer, prefer_native=prefer_native)
        for item in inner.iterdir():
            os.replace(item, tmp / item.name)
        inner.rmdir()
        generation_config(model.config, max_new_tokens).save_pretrained(tmp)
        if getattr(tokenizer, "chat_template", None) and not (tmp / "chat_template.jinja").exists():
            (tmp / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
        (tmp / "README.md").write_text(model_card(model, path.name, written, stage, summary), encoding="utf-8")
        (tmp / "export_info.json").write_text(json.dumps({"stage": stage, **written}, indent=2), encoding="utf-8")
    logger.info("wrote %s HF directory (%s) to %s", written["format"], written["architecture"], path)
    return {"path": str(path), **written}


__all__ = ["export_hf", "generation_config", "model_card"]
