"""The data of the sft / dpo stages: synth partitions and the user's own chat / preference datasets.

A stage's ``sources`` lists entries of two kinds, mixed freely::

    sources:
      - chat                                   # a synth partition (type name), as before
      - {path: data/01_raw/my_chat.jsonl}      # a user dataset (DataSource)
      - {hf: org/name, split: train, weight: 2.0, max_samples: 5000}

A :class:`DataSource` is a local ``path`` -- a ``.jsonl`` / ``.json`` / ``.parquet`` file, a folder
of such files (read in name order), or a ``datasets.save_to_disk`` folder (its ``split`` when it
holds a DatasetDict) -- or a Hugging Face dataset id ``hf`` (``datasets.load_dataset(hf, subset,
split=split)``), which needs the hub: offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) the
stage's parameters are refused before any node runs, naming the key.

Rows follow the conventions TRL reads:

* ``sft``: ``messages``, a list of ``{role, content}`` (roles system / user / assistant / tool),
  with at least one assistant turn; an optional ``tools`` column (JSON schemas) is rendered into
  the system message and an assistant turn's ``tool_calls`` into ``<|tool_call|>`` blocks, the way
  the synth tool conversations carry them. Loss on assistant tokens only (:mod:`.sft`).
* ``dpo``: ``prompt`` / ``chosen`` / ``rejected``, either strings (the prompt is a user turn, each
  answer an assistant turn) or conversational (lists of messages: the prompt is the conversation
  so far, each answer the turns that follow); or the implicit-prompt form, ``chosen`` / ``rejected``
  full conversations without ``prompt``, whose longest common prefix is the prompt. Rendered
  through :func:`~xoron_pipelines.training.dpo.build_preference_example`, labels on the answer's
  assistant tokens only.

Nothing is dropped silently: a row that cannot be used is *quarantined* with a reason (a reader
reason such as ``malformed_json``, or ``missing_field``, ``bad_messages``, ``unknown_role``,
``no_assistant_turn``, ``empty_assistant_turn``, ``chosen_equals_rejected``, ``render_error``,
``no_target_within_max_seq_len``), counted per source and reason, logged, and reported in the
stage's summary and MLflow parameters (:meth:`ChatData.report`): for every source
``rows_in = used + capped + quarantined`` (``capped``: valid rows over the source's
``max_samples``). A source without a usable row is an error before training.

Design: the Kedro DAG is built before the parameters are read, so a stage cannot have one catalog
dataset per user file. The node reads its user datasets itself from its validated parameters, as a
``PartitionedDataset`` reads its partitions (the synth partitions still come from the catalog's
``synth_raw``). What the stage trains on is identified by content: the stage fingerprint hashes the
rendered token ids (:func:`~xoron_pipelines.training.fingerprint.examples_fingerprint`), so editing
a file changes the checkpoint directory and resuming stays correct.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Discriminator, Field, Tag, model_validator

from xoron_pipelines.data import sources as readers
from xoron_pipelines.tokens import CHAT_ROLES, block
from xoron_pipelines.training.dpo import build_preference_example
from xoron_pipelines.training.losses import BlockWeighter, LossWeights
from xoron_pipelines.training.sft import build_sft_example, has_targets
from xoron_pipelines.validation import StrictModel

log = logging.getLogger(__name__)

ChatKind = Literal["sft", "dpo"]

#: largest raw row (bytes of a JSON line) read; larger ones are quarantined as ``oversized``
MAX_ROW_BYTES = 16 << 20
#: quarantined rows listed one by one in the report (the counts are always complete)
MAX_LISTED = 100
#: file suffixes read from a user path, and their readers (those of data_processing)
READERS = {".jsonl": readers._iter_jsonl, ".json": readers._iter_json, ".parquet": readers._iter_parquet}

# quarantine reasons of rows that were read (the readers add malformed_json, invalid_utf8, ...)
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
BAD_MESSAGES = "bad_messages"
UNKNOWN_ROLE = "unknown_role"
NO_ASSISTANT_TURN = "no_assistant_turn"
EMPTY_ASSISTANT_TURN = "empty_assistant_turn"
CHOSEN_EQUALS_REJECTED = "chosen_equals_rejected"
RENDER_ERROR = "render_error"
TRUNCATED = "no_target_within_max_seq_len"


def hf_offline() -> bool:
    """Whether Hugging Face is switched offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


class DataSource(StrictModel):
    """A user dataset of an sft / dpo stage: exactly one of ``path`` and ``hf``."""

    path: str | None = Field(
        None,
        min_length=1,
        description="a .jsonl / .json / .parquet file, a folder of them, or a datasets.save_to_disk folder "
        "(relative to the project root)",
    )
    hf: str | None = Field(None, min_length=1, description="a Hugging Face dataset id (needs the hub: online)")
    subset: str | None = Field(None, min_length=1, description="hf: the dataset's configuration name")
    split: str = Field("train", min_length=1, description="the split of an hf id or of a save_to_disk DatasetDict")
    weight: float = Field(
        1.0,
        gt=0,
        description="oversampling of the source's training examples: 2.0 = each twice, 0.5 = a seeded half "
        "(held-out examples are not repeated)",
    )
    max_samples: int | None = Field(
        None, gt=0, description="use at most this many valid rows of the source (a seeded subset); null = all"
    )

    @model_validator(mode="after")
    def _one_location(self) -> DataSource:
        if (self.path is None) == (self.hf is None):
            raise ValueError("a user dataset needs exactly one of path (local) and hf (a Hugging Face dataset id)")
        if self.subset is not None and self.hf is None:
            raise ValueError("subset (a Hugging Face configuration) needs hf")
        return self

    @property
    def label(self) -> str:
        if self.path is not None:
            return self.path
        return f"hf:{self.hf}" + (f"/{self.subset}" if self.subset else "") + f"[{self.split}]"

    def check_available(self, key: str) -> None:
        """Fail before any work when the data cannot be had: a missing path, or an hf id offline.
        ``key`` names the entry (``sources[1]``)."""
        if self.path is not None and not Path(self.path).expanduser().exists():
            raise ValueError(
                f"{key}.path: {self.path} does not exist (a relative path is read from the project root, "
                f"here {Path.cwd()})"
            )
        if self.hf is not None and hf_offline():
            raise ValueError(
                f"{key}.hf: {self.hf!r} is a Hugging Face dataset id but Hugging Face is offline "
                "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set): go online, or save the dataset once "
                "(datasets' save_to_disk, or .jsonl / .parquet files) and name it with path:"
            )


def _source_kind(value: Any) -> str:
    return "synth" if isinstance(value, str) else "dataset"


#: an entry of ``sources``: a synth type name, or a user dataset (errors name the branch taken)
Source = Annotated[Annotated[str, Tag("synth")] | Annotated[DataSource, Tag("dataset")], Discriminator(_source_kind)]


class BadRow(ValueError):
    """A row that cannot be used: ``reason`` (a constant of this module) and the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# ------------------------------------------------------------------------------ reading
def _hf_rows(path: str, split: str, subset: str | None) -> Iterator[Any]:
    return readers._iter_hf(SimpleNamespace(path=path, split=split, subset=subset, streaming=False))


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _files(path: Path, key: str) -> list[Path]:
    if path.is_file():
        if path.suffix not in READERS:
            raise ValueError(f"{key}: {path} is not one of {sorted(READERS)}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix in READERS and p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{key}: the folder {path} holds no {' / '.join(sorted(READERS))} file")
    return files


def raw_rows(source: Source, key: str, synth_raw: Mapping[str, Any]) -> Iterator[tuple[str, int | None, Any]]:
    """``(file, row, value)`` of every row of ``source``; ``value`` is the parsed row or a
    :class:`~xoron_pipelines.data.sources.RawRecord` carrying the reader's quarantine reason.
    A source that cannot be read at all raises ``ValueError`` naming ``key`` and the file."""
    if isinstance(source, str):
        if source not in synth_raw:
            raise ValueError(
                f"{key}: synth partition {source!r} not found (available: {sorted(synth_raw)}); run synth "
                "with that type, or name a user dataset ({path: ...} / {hf: ...})"
            )
        partition = synth_raw[source]
        file = readers.synth_label(source, partition)
        for row, value in readers._iter_partition(partition):
            yield file, row, value
        return
    if source.hf is not None:
        targets = [(f"hf:{source.hf}", lambda: _hf_rows(source.hf, source.split, source.subset))]
    else:
        path = Path(source.path).expanduser()
        if path.is_dir() and _is_saved_dataset(path):
            targets = [(str(path), lambda: _hf_rows(str(path), source.split, None))]
        else:
            targets = [(str(f), lambda f=f: READERS[f.suffix](f, MAX_ROW_BYTES)) for f in _files(path, key)]
    for file, open_rows in targets:
        try:
            for item in open_rows():
                if isinstance(item, readers.RawRecord):
                    yield file, item.row, item
                else:
                    yield file, item[0], item[1]
        except Exception as exc:  # noqa: BLE001 -- re-raised with where it happened
            raise ValueError(f"{key}: cannot read {file}: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------ row checks
def _tool_call_text(call: Any) -> str:
    fn = call.get("function", call) if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise BadRow(BAD_MESSAGES, f"a tool call must name a function, got {call!r:.120}")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            pass
    open_, close = block("tool_call")
    return f"{open_}\n{json.dumps({'name': fn['name'], 'arguments': args})}\n{close}"


def check_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """``messages`` as plain ``{role, content}`` dicts, or :class:`BadRow`: a list of objects with
    a known role and string content; an assistant turn's ``tool_calls`` become ``<|tool_call|>``
    blocks after its content, and an assistant turn must not be empty."""
    if not isinstance(messages, list) or not messages:
        raise BadRow(BAD_MESSAGES, f"{where} must be a non-empty list of {{role, content}} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise BadRow(BAD_MESSAGES, f"{where}[{i}] is not a {{role, content}} object")
        role, content = message["role"], message.get("content")
        if role not in CHAT_ROLES:
            raise BadRow(UNKNOWN_ROLE, f"{where}[{i}].role {role!r} is not one of {sorted(CHAT_ROLES)}")
        if content is None and message.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise BadRow(BAD_MESSAGES, f"{where}[{i}].content must be a string, got {type(content).__name__}")
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(_tool_call_text(c) for c in message["tool_calls"])
            content = f"{content}\n{calls}" if content.strip() else calls
        if role == "assistant" and not content.strip():
            raise BadRow(EMPTY_ASSISTANT_TURN, f"{where}[{i}] is an empty assistant turn")
        out.append({"role": role, "content": content})
    return out


def _with_tools(messages: list[dict[str, str]], tools: Any) -> list[dict[str, str]]:
    """TRL's ``tools`` column (JSON schemas, bare or ``{"type": "function", "function": ...}``)
    rendered into the system message as the synth tool conversations carry it."""
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise BadRow(BAD_MESSAGES, "tools must be a list of JSON schema objects")
    schemas = [dict(t["function"]) if isinstance(t.get("function"), Mapping) else dict(t) for t in tools]
    open_, close = block("tools")
    text = f"You can call these tools:\n{open_}\n{json.dumps(schemas)}\n{close}"
    if messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']} {text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRow(NOT_AN_OBJECT, f"row is a {type(value).__name__}, expected an object")
    return value


def _needs_assistant(messages: list[dict[str, str]], where: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow(NO_ASSISTANT_TURN, f"{where} has no assistant turn")


def sft_row(value: Any) -> list[dict[str, str]]:
    """The conversation of a chat row (``messages`` [+ ``tools``]), or :class:`BadRow`."""
    row = _object(value)
    if "messages" not in row:
        raise BadRow(MISSING_FIELD, f"no 'messages' field (fields: {sorted(row)[:10]})")
    messages = check_messages(row["messages"])
    if row.get("tools"):
        messages = _with_tools(messages, row["tools"])
    _needs_assistant(messages, "messages")
    return messages


def _answer(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise BadRow(EMPTY_ASSISTANT_TURN, f"{where} is empty")
        return [{"role": "assistant", "content": value}]
    return check_messages(value, where)


def dpo_row(value: Any) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """``(prompt, chosen, rejected)`` message lists of a preference row, or :class:`BadRow`:
    explicit prompt (string or messages) or implicit (the longest common prefix of two full
    conversations); each answer holds an assistant turn and the two differ."""
    row = _object(value)
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise BadRow(MISSING_FIELD, f"no {' / '.join(repr(k) for k in missing)} field (fields: {sorted(row)[:10]})")
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        else:
            prompt = check_messages(prompt, "prompt")
        chosen, rejected = _answer(row["chosen"], "chosen"), _answer(row["rejected"], "rejected")
    else:
        if isinstance(row["chosen"], str) or isinstance(row["rejected"], str):
            raise BadRow(MISSING_FIELD, "no 'prompt' field (string answers need one; only conversations carry it)")
        full_c, full_r = check_messages(row["chosen"], "chosen"), check_messages(row["rejected"], "rejected")
        n = 0
        while n < min(len(full_c), len(full_r)) and full_c[n] == full_r[n]:
            n += 1
        prompt, chosen, rejected = full_c[:n], full_c[n:], full_r[n:]
    if chosen == rejected:
        raise BadRow(CHOSEN_EQUALS_REJECTED, "chosen and rejected are the same answer")
    _needs_assistant(chosen, "chosen")
    _needs_assistant(rejected, "rejected")
    return prompt, chosen, rejected


# ------------------------------------------------------------------------------ the stage data
@dataclass
class SourceCounts:
    """Rows of one source: ``rows_in = used + capped + sum(quarantined.values())``."""

    source: str
    rows_in: int = 0
    used: int = 0
    capped: int = 0
    quarantined: Counter = field(default_factory=Counter)


@dataclass
class ChatData:
    """The rendered examples of a chat stage, the source of each (index into ``sources``), the
    per-source counts and the quarantined rows (``{source, file, row, reason, detail}``)."""

    examples: list[dict]
    source_of: list[int]
    counts: list[SourceCounts]
    quarantine: list[dict[str, Any]]

    def report(self) -> dict[str, Any]:
        """JSON-able counts: totals, per reason, per source, and the first :data:`MAX_LISTED`
        quarantined rows."""
        reasons = sum((c.quarantined for c in self.counts), Counter())
        return {
            "rows_in": sum(c.rows_in for c in self.counts),
            "used": sum(c.used for c in self.counts),
            "capped": sum(c.capped for c in self.counts),
            "quarantined": sum(reasons.values()),
            "quarantine_reasons": dict(sorted(reasons.items())),
            "sources": [
                {
                    "source": c.source,
                    "rows_in": c.rows_in,
                    "used": c.used,
                    "capped": c.capped,
                    "quarantined": dict(sorted(c.quarantined.items())),
                }
                for c in self.counts
            ],
            "quarantined_rows": self.quarantine[:MAX_LISTED],
        }

    def tracking_params(self) -> dict[str, Any]:
        """The counts for the stage's MLflow parameters (``data.*``; no row listing)."""
        report = self.report()
        report.pop("quarantined_rows")
        report["sources"] = {f"{i}": s for i, s in enumerate(report["sources"])}
        return {"data": report}


def _render_sft(messages, tokenizer, max_len: int, weighter: BlockWeighter) -> dict:
    return build_sft_example(messages, tokenizer, max_len, weighter)


def _render_dpo(triple, tokenizer, max_len: int, weighter: BlockWeighter | None) -> dict:
    prompt, chosen, rejected = triple
    return build_preference_example(prompt, chosen, rejected, tokenizer, max_len)


def _targets(kind: ChatKind, example: dict) -> bool:
    if kind == "sft":
        return has_targets(example)
    return has_targets({"labels": example["chosen_labels"]}) and has_targets({"labels": example["rejected_labels"]})


def load_chat_data(
    stage: str,
    kind: ChatKind,
    sources: Sequence[Source],
    synth_raw: Mapping[str, Any],
    tokenizer,
    max_len: int,
    seed: int,
    loss_weights: LossWeights | None = None,
) -> ChatData:
    """Read, check and render every row of ``sources`` for a ``kind`` stage (see the module doc).

    Per source: its rows are read (:func:`raw_rows`), checked (:func:`sft_row` / :func:`dpo_row`),
    capped to its ``max_samples`` (a seeded subset) and rendered; rows that fail are quarantined.
    Raises ``ValueError`` naming the stage, the source and its counts per reason when a source
    has no usable row (an empty or wrongly shaped dataset is an error, not a silent no-op)."""
    from xoron_pipelines.training.stage_data import _subset

    check = sft_row if kind == "sft" else dpo_row
    render = _render_sft if kind == "sft" else _render_dpo
    weighter = BlockWeighter.from_tokenizer(tokenizer, loss_weights or LossWeights()) if kind == "sft" else None
    examples, source_of, counts, quarantine = [], [], [], []
    for index, source in enumerate(sources):
        key = f"stage {stage}: sources[{index}]"
        c = SourceCounts(source if isinstance(source, str) else source.label)

        def bad(file, row, reason, detail, c=c):
            c.quarantined[reason] += 1
            quarantine.append({"source": c.source, "file": file, "row": row, "reason": reason, "detail": detail})

        valid = []
        for file, row, value in raw_rows(source, key, synth_raw):
            c.rows_in += 1
            if isinstance(value, readers.RawRecord):
                bad(file, row, value.reason, value.detail)
                continue
            try:
                valid.append((file, row, check(value)))
            except BadRow as exc:
                bad(file, row, exc.reason, str(exc))
        cap = None if isinstance(source, str) else source.max_samples
        keep = _subset(len(valid), cap, seed)
        c.capped = len(valid) - len(keep)
        for i in keep:
            file, row, content = valid[int(i)]
            try:
                example = render(content, tokenizer, max_len, weighter)
            except ValueError as exc:
                bad(file, row, RENDER_ERROR, str(exc))
                continue
            if not _targets(kind, example):
                bad(file, row, TRUNCATED, f"no answer token left within max_seq_len={max_len}")
                continue
            examples.append(example)
            source_of.append(index)
            c.used += 1
        counts.append(c)
    data = ChatData(examples, source_of, counts, quarantine)
    _log(stage, data)
    for index, c in enumerate(counts):
        if not c.used:
            first = next((q for q in quarantine if q["source"] == c.source), None)
            raise ValueError(
                f"stage {stage}: sources[{index}] ({c.source}): no usable {kind} row among its {c.rows_in} "
                f"(quarantined: {dict(c.quarantined) or 'none'}"
                + (f"; e.g. {first['file']} row {first['row']}: {first['detail']}" if first else "")
                + ")"
            )
    return data


def _log(stage: str, data: ChatData) -> None:
    for c in data.counts:
        if c.quarantined:
            log.warning(
                "stage %s: source %s: %d of %d rows quarantined (%s)",
                stage,
                c.source,
                sum(c.quarantined.values()),
                c.rows_in,
                ", ".join(f"{r}: {n}" for r, n in sorted(c.quarantined.items())),
            )
        log.info(
            "stage %s: source %s: %d rows in, %d used, %d over max_samples",
            stage,
            c.source,
            c.rows_in,
            c.used,
            c.capped,
        )
    for q in data.quarantine[:5]:  # examples of what the per-source warnings above counted
        log.info("stage %s: quarantined %s row %s: %s (%s)", stage, q["file"], q["row"], q["reason"], q["detail"])


def oversample(indices: Sequence[int], source_of: Sequence[int], weights: Sequence[float], seed: int) -> list[int]:
    """``indices`` (training examples) with each source's ``weight`` applied: ``floor(w)`` copies
    of each of its examples plus a seeded ``w - floor(w)`` share of them once more (a weight
    below 1 keeps that share only). Sorted, so the result depends on the set, not the order."""
    rng = np.random.default_rng([seed, 13])
    out: list[int] = []
    for s, w in enumerate(weights):
        mine = sorted(i for i in indices if source_of[i] == s)
        whole, frac = math.floor(w), w - math.floor(w)
        out.extend(mine * whole)
        extra = round(frac * len(mine))
        if extra:
            out.extend(mine[int(j)] for j in np.sort(rng.permutation(len(mine))[:extra]))
    return sorted(out)


__all__ = [
    "BadRow",
    "ChatData",
    "DataSource",
    "Source",
    "check_messages",
    "dpo_row",
    "hf_offline",
    "load_chat_data",
    "oversample",
    "raw_rows",
    "sft_row",
]
