"""JSONL task files in the formats of the public benchmarks, and their prompts.

One JSON object per line, with the fields of the public Hugging Face sets, so a user converts
a full public set with ``datasets.load_dataset(...).to_json(path)`` and points the config at it
(extra fields are ignored):

* ``hellaswag``: ``ctx`` (or ``ctx_a`` + ``ctx_b``), ``endings`` (list), ``label`` (index, int or
  digit string), optional ``activity_label``;
* ``mmlu``: ``question``, ``choices`` (list), ``answer`` (index or letter), optional ``subject``;
* ``truthfulqa``: ``question``, ``mc1_targets`` and ``mc2_targets`` (each ``{choices, labels}``,
  labels 1 for true answers), the ``multiple_choice`` config of truthful_qa;
* ``gsm8k``: ``question``, ``answer`` (a solution ending in ``#### <number>``);
* ``humaneval``: ``task_id``, ``prompt``, ``test`` (defines ``check(candidate)``),
  ``entry_point``, optional ``canonical_solution``.

A malformed row raises :class:`TaskFileError` naming the file and line. Prompts follow
lm-evaluation-harness (hellaswag preprocessing, mmlu's lettered template, truthfulqa's
six-shot QA preamble, gsm8k's ``Question: ... Answer:``).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xoron_pipelines.atomic import atomic_open
from xoron_pipelines.evaluation.multiple_choice import MCItem

TaskFormat = Literal["hellaswag", "mmlu", "truthfulqa", "gsm8k", "humaneval"]
MC_FORMATS = ("hellaswag", "mmlu", "truthfulqa")
GENERATION_FORMATS = ("gsm8k", "humaneval")


class TaskFileError(ValueError):
    """A task file is missing or one of its rows is malformed (message names file and line)."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore")


class HellaswagRow(_Row):
    ctx: str | None = None
    ctx_a: str | None = None
    ctx_b: str = ""
    activity_label: str = ""
    endings: list[str] = Field(min_length=2)
    label: int

    @model_validator(mode="after")
    def _check(self) -> HellaswagRow:
        if self.ctx is None and self.ctx_a is None:
            raise ValueError("needs 'ctx' or 'ctx_a'")
        if not 0 <= self.label < len(self.endings):
            raise ValueError(f"label {self.label} is not an index of the {len(self.endings)} endings")
        return self


class MMLURow(_Row):
    question: str
    choices: list[str] = Field(min_length=2, max_length=26)
    answer: int | str
    subject: str = ""

    @model_validator(mode="after")
    def _check(self) -> MMLURow:
        if isinstance(self.answer, str):
            letter = self.answer.strip().upper()
            if len(letter) != 1 or letter not in string.ascii_uppercase:
                raise ValueError(f"answer {self.answer!r} is neither an index nor a letter")
            self.answer = string.ascii_uppercase.index(letter)
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer {self.answer} is not an index of the {len(self.choices)} choices")
        return self


class Targets(_Row):
    choices: list[str] = Field(min_length=2)
    labels: list[int]

    @model_validator(mode="after")
    def _check(self) -> Targets:
        if len(self.labels) != len(self.choices) or set(self.labels) - {0, 1}:
            raise ValueError("labels must be 0/1, one per choice")
        if 1 not in self.labels or 0 not in self.labels:
            raise ValueError("needs at least one true (1) and one false (0) choice")
        return self


class TruthfulQARow(_Row):
    question: str
    mc1_targets: Targets
    mc2_targets: Targets

    @field_validator("mc1_targets")
    @classmethod
    def _one_true(cls, value: Targets) -> Targets:
        if sum(value.labels) != 1:
            raise ValueError("mc1_targets must have exactly one true choice")
        return value


class GSM8KRow(_Row):
    question: str
    answer: str

    @field_validator("answer")
    @classmethod
    def _has_final(cls, value: str) -> str:
        if not re.search(r"####\s*-?[$0-9.,]*[0-9]", value):
            raise ValueError("answer must end with '#### <number>'")
        return value


class HumanEvalRow(_Row):
    task_id: str
    prompt: str
    test: str
    entry_point: str = Field(pattern=r"^[A-Za-z_]\w*$")
    canonical_solution: str = ""

    @field_validator("test")
    @classmethod
    def _defines_check(cls, value: str) -> str:
        if "def check(" not in value:
            raise ValueError("test must define check(candidate)")
        return value


ROW_MODELS: dict[str, type[_Row]] = {
    "hellaswag": HellaswagRow,
    "mmlu": MMLURow,
    "truthfulqa": TruthfulQARow,
    "gsm8k": GSM8KRow,
    "humaneval": HumanEvalRow,
}


def validate_rows(
    rows: Iterable[Mapping[str, Any]], fmt: str, source: str, first_line: int = 1
) -> list[dict[str, Any]]:
    """Validate already-parsed rows (``source`` and line numbers name them in errors)."""
    model = ROW_MODELS[fmt]
    out = []
    for lineno, row in enumerate(rows, start=first_line):
        try:
            out.append(model.model_validate(row).model_dump())
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise TaskFileError(
                f"{source}:{lineno}: malformed {fmt} row: {where + ': ' if where else ''}{err['msg']}"
            ) from None
    return out


def load_task(path: str | os.PathLike, fmt: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a JSONL task file, validated for ``fmt``."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: task file not found ({fmt})")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskFileError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise TaskFileError(f"{path}:{lineno}: expected a JSON object, got {type(value).__name__}")
            rows.extend(validate_rows([value], fmt, str(path), lineno))
    return rows


def write_task(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as JSONL atomically (temporary file in the target directory, then rename)."""
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- prompts


def _hellaswag_preprocess(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_items(rows: list[dict[str, Any]]) -> list[MCItem]:
    items = []
    for i, r in enumerate(rows):
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize() if r["ctx_a"] is not None else r["ctx"]
        query = f"{r['activity_label']}: {ctx}" if r["activity_label"] else ctx
        items.append(
            MCItem(
                _hellaswag_preprocess(query),
                tuple(_hellaswag_preprocess(e) for e in r["endings"]),
                r["label"],
                meta={"index": i},
            )
        )
    return items


def mmlu_items(rows: list[dict[str, Any]]) -> list[MCItem]:
    items = []
    for i, r in enumerate(rows):
        letters = string.ascii_uppercase[: len(r["choices"])]
        subject = r["subject"].replace("_", " ")
        head = f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""
        options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(letters, r["choices"]))
        items.append(
            MCItem(
                f"{head}{r['question'].strip()}{options}\nAnswer:",
                tuple(letters),
                r["answer"],
                meta={"index": i, "subject": r["subject"]},
            )
        )
    return items


TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def truthfulqa_items(rows: list[dict[str, Any]]) -> tuple[list[MCItem], list[MCItem]]:
    """(mc1 items, mc2 items): mc1 has one true choice; mc2 scores the mass of all true ones."""
    mc1, mc2 = [], []
    for i, r in enumerate(rows):
        context = f"{TRUTHFULQA_PREAMBLE}\n\nQ: {r['question']}\nA:"
        t1, t2 = r["mc1_targets"], r["mc2_targets"]
        mc1.append(MCItem(context, tuple(t1["choices"]), t1["labels"].index(1), meta={"index": i}))
        mc2.append(
            MCItem(context, tuple(t2["choices"]), t2["labels"].index(1), labels=tuple(t2["labels"]), meta={"index": i})
        )
    return mc1, mc2


def gsm8k_prompt(row: dict[str, Any]) -> str:
    return f"Question: {row['question']}\nAnswer:"
