"""Content fingerprints of a training run: what decides the trained result, nothing else.

A stage's checkpoints live in ``<root>/<stage>/<fingerprint>/`` (see
:func:`xoron_pipelines.training.checkpoint.configuration_dir`), so the fingerprint must be equal
for two runs that train the same thing and differ otherwise. It hashes *content*:

* the data as the trainer sees it (:func:`tensors_digest` of the token ids / lengths / weights,
  or the rows of a chat stage) and the tokenizer's serialisation -- never file names, sizes,
  modification times, generation ids or manifests, so a byte-identical re-packing matches;
* the starting weights (:func:`weights_digest`: names and bytes of the state dict);
* the model config without the keys that name where it was loaded from (:data:`CONFIG_KEYS_IGNORED`:
  ``_name_or_path`` holds an absolute path) -- a moved or cloned project resumes -- and without
  the PEER usage-logging knobs;
* the settings that change the result. :data:`RESULT_NEUTRAL_TRAIN_FIELDS` lists the
  ``TrainConfig`` fields left out: checkpoint / logging cadence and the resume choice do not
  change a single weight (resume is bit-identical), and the duration (``max_steps`` /
  ``num_epochs``) is left out on purpose so that raising it continues from the newest
  checkpoint. ``eval_steps`` only matters with early stopping (it decides when evaluations
  happen), so it is part of the fingerprint exactly when ``early_stopping_patience`` is set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

#: TrainConfig fields outside the fingerprint (see the module docstring)
RESULT_NEUTRAL_TRAIN_FIELDS = frozenset(
    {
        "save_steps",
        "keep_last_k",
        "async_checkpointing",
        "logging_steps",
        "resume_from_checkpoint",
        "max_steps",
        "num_epochs",
    }
)
#: model-config keys outside the fingerprint: where the config was read from, library versions
CONFIG_KEYS_IGNORED = frozenset(
    {"_name_or_path", "_commit_hash", "transformers_version", "peer_log_expert_usage", "peer_log_freq"}
)  # logging knobs: no weight changes


def tensors_digest(tensors: Iterable[torch.Tensor | None], h: Any = None) -> str:
    """sha256 over dtype, shape and bytes of each tensor (None entries count as a marker)."""
    h = h or hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"<none>")
            continue
        t = torch.as_tensor(t).detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """sha256 over the names and bytes of the model's state dict."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        tensors_digest([tensor], h)
    return h.hexdigest()


def train_settings(cfg_dump: Mapping[str, Any]) -> dict[str, Any]:
    """A dumped ``TrainConfig`` without its result-neutral fields (``eval_steps`` kept only when
    early stopping uses it)."""
    out = {k: v for k, v in cfg_dump.items() if k not in RESULT_NEUTRAL_TRAIN_FIELDS}
    if out.get("early_stopping_patience") is None:
        out.pop("eval_steps", None)
    return out


def model_config(config: Any) -> dict[str, Any]:
    """A model config (``PretrainedConfig`` or dict) without :data:`CONFIG_KEYS_IGNORED`."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in d.items() if k not in CONFIG_KEYS_IGNORED}


def fingerprint(**parts: Any) -> str:
    """16 hex digits of sha256 over the JSON of ``parts`` (keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tokenizer_text(tokenizer) -> str:
    return "" if tokenizer is None else tokenizer.backend_tokenizer.to_str()


def tokens_fingerprint(sources, tokenizer) -> str:
    """Identity of packed data by content: the token ids, lengths and loss weights the stage reads
    (never file names, sizes, modification times or generation markers) and the tokenizer."""
    h = hashlib.sha256(_tokenizer_text(tokenizer).encode())
    return tensors_digest([t for s in sources for t in (s.ids, s.lengths, getattr(s, "loss_weights", None))], h)


def rows_fingerprint(rows: list[dict], tokenizer) -> str:
    """Identity of chat rows (sft / dpo stages) by content, and the tokenizer."""
    h = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode())
    h.update(_tokenizer_text(tokenizer).encode())
    return h.hexdigest()


def examples_fingerprint(examples: list[dict], tokenizer, extra: Any = None) -> str:
    """Identity of rendered chat examples (sft / dpo stages) by content: the token ids, labels and
    loss weights of every example in order, the tokenizer, and ``extra`` (JSON: e.g. the source of
    each example, which its weight decides). A changed row, file, template or cut changes it."""
    h = hashlib.sha256(_tokenizer_text(tokenizer).encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return tensors_digest([ex[k] for ex in examples for k in sorted(ex)], h)
