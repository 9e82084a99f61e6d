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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from transformers import GenerationConfig

from xoron_pipelines.atomic import atomic_dir
from xoron_pipelines.export.tokenizer import END_OF_TURN, export_tokenizer, mark_add_bos, model_special_ids, stop_ids
from xoron_pipelines.model import count_parameters, interop

logger = logging.getLogger(__name__)

#: the model card's licence when export.license is not given (seed 003: Xoron-Dev is MIT)
DEFAULT_LICENSE = "mit"

_CARD = """---
{front_matter}---
# Xoron model ({stage} stage)

Exported by xoron-pipelines from the `{stage}` stage.

- **Format**: {fmt}
- **Architecture**: `{arch}` ({attention} attention{moe})
- **Parameters**: {params:,}
- **Vocabulary**: {vocab} tokens, context {ctx}
- **Special tokens**: BOS `{bos}` (added by the tokenizer and the chat template, as every training row
  starts with it), EOS `{eos}`, pad `{pad}`; generation stops at {stops}
{load}
## Training data

{data}

## Training stages

{stages}

## Evaluation

{evaluation}

## Limitations

- A small model trained from scratch by xoron-pipelines on the data above: it makes things up,
  knows little beyond that data, and has had no safety tuning. Do not rely on its output.
- It continues text as training showed it: prompts start with BOS (the tokenizer adds it), chats
  use the chat template (`apply_chat_template`), and answers end with `{end_of_turn}` or EOS.
- Context is {ctx} tokens; longer prompts were never seen in training.

## License

`{license}` (the `export.license` knob) for the weights; the training data keep their own licences.

## Training summary ({stage})

{summary}
"""

_NATIVE_LOAD = """
Loads with plain transformers (no remote code):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
model = AutoModelForCausalLM.from_pretrained("{name}")
tokenizer = AutoTokenizer.from_pretrained("{name}")
generate = pipeline("text-generation", model="{name}")
generate("def add(x, y):")                                # the tokenizer adds BOS
generate([{{"role": "user", "content": "Hello!"}}])       # the chat template
```
"""

_XORON_LOAD = """
No native transformers class can represent this model exactly, so it is saved with its own
config (`model_type: "xoron"`):

{reasons}

Load it with the xoron_pipelines package (no remote code):

```python
import xoron_pipelines.model  # registers model_type "xoron" with the Auto classes
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{name}")
tokenizer = AutoTokenizer.from_pretrained("{name}")
model.generate(tokenizer("def add(x, y):", return_tensors="pt").input_ids)  # stops at EOS
```
"""

#: columns of the training-stages table: summary key -> header
STAGE_COLUMNS = {
    "kind": "kind",
    "steps": "steps",
    "tokens_seen": "tokens seen",
    "train_loss": "train loss",
    "eval_loss": "held-out loss",
    "eval_perplexity": "held-out perplexity",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _summary_text(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "(no training summary recorded)"
    return "\n".join(f"- **{k}**: {v}" for k, v in summary.items())


def data_section(data: Mapping[str, Any] | None) -> str:
    """Sources, documents and tokens from data_processing's packing manifest (None: unknown)."""
    if not data or not data.get("sources"):
        return "(no data_processing manifest given to the export)"
    sources = data["sources"]
    rows = [[name, s.get("documents"), s.get("tokens"), s.get("achieved_share")] for name, s in sorted(sources.items())]
    text = "Packed by data_processing (`packing_manifest.json`), per source:\n\n"
    text += _table(["source", "documents", "tokens", "share"], rows)
    splits = data.get("splits") or {}
    if splits:
        text += "\n\n" + _table(
            ["split", "documents", "tokens", "sequences"],
            [[name, s.get("documents"), s.get("tokens"), s.get("sequences")] for name, s in splits.items()],
        )
    if data.get("max_seq_len"):
        text += f"\n\nSequences of {data['max_seq_len']} tokens, each document `BOS + text + EOS`."
    return text


def stages_section(stages: Mapping[str, Mapping[str, Any] | None] | None) -> str:
    """One row per training stage that led to this model (the training summaries)."""
    rows = []
    for stage, summary in (stages or {}).items():
        if not summary:
            continue
        if summary.get("enabled") is False:
            rows.append([stage, "(disabled: passed through)", *[None] * (len(STAGE_COLUMNS) - 1)])
            continue
        rows.append([stage, *(summary.get(key) for key in STAGE_COLUMNS)])
    if not rows:
        return "(no training summaries recorded)"
    return _table(["stage", *STAGE_COLUMNS.values()], rows)


def evaluation_section(evaluation: str | None) -> str:
    """``evaluation`` (the evaluation pipeline's comparison table, markdown) when given; else
    where the held-out figures and the benchmark table are."""
    if evaluation and evaluation.strip():
        return evaluation.strip()
    return (
        "Held-out loss and perplexity of each stage are in the table above (the validation split, "
        "measured by training). The benchmark table (perplexity / bits per byte, multiple choice, "
        "gsm8k, humaneval pass@k, per stage) is written by `kedro run --pipeline evaluation` to "
        "`data/08_reporting/evaluation_comparison.md`; the export does not read it."
    )


def front_matter(license_: str, architecture: str, data: Mapping[str, Any] | None) -> str:
    """The model card's YAML header (Hugging Face model-card metadata)."""
    meta: dict[str, Any] = {
        "license": license_,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["xoron-pipelines", "text-generation", architecture],
    }
    if data and data.get("sources"):
        meta["datasets"] = sorted(data["sources"])
    return yaml.safe_dump(meta, sort_keys=False)


def model_card(
    model,
    name: str,
    written: dict[str, Any],
    stage: str,
    summary: dict[str, Any] | None,
    tokenizer=None,
    data: Mapping[str, Any] | None = None,
    stages: Mapping[str, Mapping[str, Any] | None] | None = None,
    evaluation: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> str:
    """README.md text (Hugging Face model card): YAML metadata (license, library, tags, datasets),
    format, architecture, size, special tokens, how to load, the training data (``data``: the
    packing manifest), the stages (``stages``: {stage: train summary} up to this one), the
    evaluation (``evaluation``: a markdown table, else the summaries' held-out figures),
    limitations, licence, and the source stage's ``summary``."""
    cfg = model.config
    if written["format"] == "native":
        load = _NATIVE_LOAD.format(name=name)
    else:
        load = _XORON_LOAD.format(name=name, reasons="\n".join(f"- {r}" for r in written["unsupported"]))
    moe = f", MoE {cfg.num_experts} experts top-{cfg.num_experts_per_tok}" if cfg.use_moe else ""
    moe += ", PEER" if cfg.use_peer else ""
    tok = tokenizer
    stops = ", ".join(f"`{tok.convert_ids_to_tokens(i)}`" for i in stop_ids(tok)) if tok is not None else "EOS"
    return _CARD.format(
        front_matter=front_matter(license, written["architecture"], data),
        name=name,
        stage=stage,
        fmt="native transformers" if written["format"] == "native" else "xoron",
        arch=written["architecture"],
        attention=cfg.attention_type.upper(),
        moe=moe,
        params=count_parameters(cfg)["total"],
        vocab=cfg.vocab_size,
        ctx=cfg.max_position_embeddings,
        bos=getattr(tok, "bos_token", None),
        eos=getattr(tok, "eos_token", None),
        pad=getattr(tok, "pad_token", None),
        stops=stops,
        end_of_turn=END_OF_TURN,
        load=load,
        data=data_section(data),
        stages=stages_section(stages),
        evaluation=evaluation_section(evaluation),
        license=license,
        summary=_summary_text(summary),
    )


def generation_config(
    config, max_new_tokens: int = 256, eos_token_id: int | list[int] | None = None
) -> GenerationConfig:
    """Greedy decoding defaults with our special token ids; ``eos_token_id`` (default the
    config's) is every id generation stops at (:func:`~xoron_pipelines.export.tokenizer.stop_ids`)."""
    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id if eos_token_id is None else eos_token_id,
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
    data: Mapping[str, Any] | None = None,
    stages: Mapping[str, Mapping[str, Any] | None] | None = None,
    evaluation: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> dict[str, Any]:
    """Write the Hugging Face directory at ``path`` (atomic). Returns format/architecture/reasons.

    The directory generates as the model trained: config.json and generation_config.json carry
    the tokenizer's bos / eos / pad ids (a model config naming other ids is refused), the
    generation config stops at EOS and at the end of an assistant turn and defaults to
    ``max_new_tokens`` new tokens, greedy; the tokenizer is
    :func:`~xoron_pipelines.export.tokenizer.export_tokenizer`'s (adds BOS, chat template with
    BOS). README.md is :func:`model_card` (``data``, ``stages``, ``evaluation``, ``license``)."""
    path = Path(path)
    tok = export_tokenizer(tokenizer)
    with model_special_ids(model, tok), atomic_dir(path) as tmp:
        inner = tmp / "model"
        written = interop.export(model, inner, tok, prefer_native=prefer_native)
        for item in inner.iterdir():
            os.replace(item, tmp / item.name)
        inner.rmdir()
        mark_add_bos(tmp, tok)
        generation_config(model.config, max_new_tokens, stop_ids(tok)).save_pretrained(tmp)
        if getattr(tok, "chat_template", None) and not (tmp / "chat_template.jinja").exists():
            (tmp / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
        card = model_card(model, path.name, written, stage, summary, tok, data, stages, evaluation, license)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / "export_info.json").write_text(json.dumps({"stage": stage, **written}, indent=2), encoding="utf-8")
    logger.info("wrote %s HF directory (%s) to %s", written["format"], written["architecture"], path)
    return {"path": str(path), **written}


__all__ = ["DEFAULT_LICENSE", "export_hf", "generation_config", "model_card"]
