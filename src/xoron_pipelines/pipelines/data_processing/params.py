"""Schema of ``conf/base/parameters_data_processing.yml`` (top-level key ``data_processing``).

Sources follow the ``dataset_config.datasets`` entries of the llm720 configuration guide (name,
path, subset, split, streaming, weight, text_field | text_template) plus the Xoron-Dev dataset
entry fields (format, category -> modality) and limits (max_per_dataset -> ``max_samples``,
``sample_repeat``, ``max_per_epoch``). Named mixes follow ``data_mixes`` of ``datasets.yaml``.
"""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import Field, model_validator

from xoron_pipelines.categories import CATEGORY_TO_MODALITY, DATASET_CATEGORIES, MODALITIES
from xoron_pipelines.synth import SYNTH_TYPES
from xoron_pipelines.validation import Seed, StrictModel

FORMATS = ("jsonl", "json", "parquet", "text", "hf", "stdlib", "synth")


class Source(StrictModel):
    """One input corpus.

    ``path`` is a local file, directory (every file in it, sorted) or glob for jsonl / json /
    parquet / text; a Hugging Face dataset id or a ``save_to_disk`` directory for ``hf``; and
    ``code`` or ``prose`` for ``stdlib`` (the Python standard library's sources / docstrings and
    comments, built on the fly); a synthetic type for ``synth`` (its partition of the catalog
    dataset ``synth_raw``, the output of the ``synth`` pipeline, read through the catalog). Text comes from ``text_field`` or ``text_template`` (exactly one
    of them), and/or from ``messages_field`` (a chat, rendered with the chat template); a row may
    carry either, messages win when present.
    """

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    format: Literal["jsonl", "json", "parquet", "text", "hf", "stdlib", "synth"] = "jsonl"
    split: str = "train"
    subset: str | None = None
    streaming: bool = False
    text_field: str | None = None
    text_template: str | None = None
    messages_field: str | None = None
    weight: float = Field(default=1.0, gt=0)
    category: str
    modality: str | None = None
    max_samples: int | None = Field(default=None, ge=1)
    sample_repeat: int = Field(default=1, ge=1)
    max_per_epoch: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Source:
        if self.text_field is not None and self.text_template is not None:
            raise ValueError(f"source {self.name!r}: give text_field or text_template, not both")
        if self.text_field is None and self.text_template is None and self.messages_field is None:
            raise ValueError(f"source {self.name!r}: needs text_field, text_template or messages_field")
        if self.text_template is not None:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.text_template) if f is not None]
            if not fields or any(f == "" or not f.isidentifier() for f in fields):
                raise ValueError(
                    f"source {self.name!r}: text_template needs named fields like {{instruction}}, "
                    f"got {self.text_template!r}"
                )
        if self.category not in DATASET_CATEGORIES:
            raise ValueError(
                f"source {self.name!r}: unknown category {self.category!r}; expected one of {list(DATASET_CATEGORIES)}"
            )
        derived = CATEGORY_TO_MODALITY[self.category]
        if self.modality is None:
            self.modality = derived
        elif self.modality != derived:
            raise ValueError(
                f"source {self.name!r}: category {self.category!r} belongs to modality {derived!r}, "
                f"not {self.modality!r}"
            )
        if self.format == "stdlib" and self.path not in ("code", "prose"):
            raise ValueError(f"source {self.name!r}: a stdlib source's path is 'code' or 'prose'")
        if self.format == "synth" and self.path not in SYNTH_TYPES:
            raise ValueError(
                f"source {self.name!r}: a synth source's path is a synthetic type, one of "
                f"{list(SYNTH_TYPES)}; got {self.path!r}"
            )
        return self


class DataMix(StrictModel):
    """A named list of sources (``data_mixes.<key>``)."""

    name: str
    datasets: list[Source] = Field(min_length=1)


class StdlibCorpus(StrictModel):
    """The embedded default corpus built from the Python standard library."""

    max_bytes: int | None = Field(default=4_000_000, ge=1, description="cap per kind (code, prose); null = all")
    min_prose_chars: int = Field(default=40, ge=1, description="shortest docstring/comment block kept as prose")
    include_tests: bool = Field(default=False, description="also read the stdlib's own test suites")


class Cleaning(StrictModel):
    normalization: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = "NFC"
    strip_control: bool = True
    min_chars: int = Field(default=16, ge=0)
    max_chars: int = Field(default=100_000, ge=1)
    max_record_bytes: int = Field(default=1_000_000, ge=1, description="larger raw records are quarantined")

    @model_validator(mode="after")
    def _range(self) -> Cleaning:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) > max_chars ({self.max_chars})")
        return self


class Dedup(StrictModel):
    exact: bool = True
    near_dup: bool = True
    near_dup_threshold: float = Field(default=0.85, gt=0, le=1)
    num_perm: int = Field(default=64, ge=16, le=512)
    shingle_size: int = Field(default=5, ge=1)


class TokenizerParams(StrictModel):
    vocab_size: int = Field(default=8000, ge=8000, le=100_000)
    min_frequency: int = Field(default=2, ge=1)
    max_train_chars: int | None = Field(default=None, ge=1, description="characters fed to the trainer; null = all")


class Packing(StrictModel):
    max_seq_len: int = Field(default=256, ge=8)
    packing: Literal["best_fit", "concat"] = "best_fit"
    best_fit_buffer: int = Field(default=1024, ge=1, description="documents packed together by best-fit")
    preprocess_validation_fraction: float = Field(default=0.05, ge=0, lt=1)
    preprocess_batch_size: int = Field(default=256, ge=1, description="documents per encode_batch call")
    rows_per_shard: int = Field(default=8192, ge=1)
    export_npy: bool = False


class Mixing(StrictModel):
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "all_exhausted"
    max_per_epoch: int | None = Field(default=None, ge=1, description="cap on documents in the whole mix")


class Params(StrictModel):
    """Ingest, clean, deduplicate, train the tokenizer, tokenize, mix and pack."""

    seed: Seed = 42
    sources: list[Source] = Field(default_factory=list)
    data_mixes: dict[str, DataMix] = Field(default_factory=dict)
    mix: str | None = None
    stage_mixes: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="extra packings for the training stages (pretrain.stages.<stage>.data_mix): "
        "{mix name: {source name: weight}} over the selected sources, each packed to "
        "packed_mixes/<name>/{train,val} from the same ledger, tokenizer and split",
    )
    modalities: list[str] | None = None
    categories: list[str] | None = None
    on_bad_record: Literal["quarantine", "fail"] = "quarantine"
    stdlib_corpus: StdlibCorpus = Field(default_factory=StdlibCorpus)
    cleaning: Cleaning = Field(default_factory=Cleaning)
    dedup: Dedup = Field(default_factory=Dedup)
    tokenizer: TokenizerParams = Field(default_factory=TokenizerParams)
    packing: Packing = Field(default_factory=Packing)
    mixing: Mixing = Field(default_factory=Mixing)
    progress: bool = True
    lock_timeout_s: float = Field(
        default=600.0,
        ge=0,
        allow_inf_nan=False,
        strict=True,
        description="seconds a run waits for the project's data lock (data_processing vs the runs "
        "reading its outputs) before it stops naming the holder; 0 = do not wait",
    )

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.mix is not None and self.mix not in self.data_mixes:
            raise ValueError(f"mix {self.mix!r} is not defined in data_mixes (have {sorted(self.data_mixes)})")
        for label, values, allowed in (
            ("modalities", self.modalities, MODALITIES),
            ("categories", self.categories, DATASET_CATEGORIES),
        ):
            unknown = sorted(set(values or ()) - set(allowed) - {"all"})
            if unknown:
                raise ValueError(f"unknown {label} {unknown}; expected some of {list(allowed)}")
        for sources in [self.sources] + [m.datasets for m in self.data_mixes.values()]:
            names = [s.name for s in sources]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"source names must be unique within a list; repeated: {dup}")
        if not self.selected_sources():
            raise ValueError("no source left after the mix / modalities / categories selection")
        self._check_stage_mixes()
        return self

    def _check_stage_mixes(self) -> None:
        selected = [s.name for s in self.selected_sources()]
        for name, weights in self.stage_mixes.items():
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
                raise ValueError(f"stage_mixes.{name}: a mix name is a folder name (letters, digits, _ . -)")
            if not weights:
                raise ValueError(f"stage_mixes.{name}: give at least one source with its weight")
            unknown = sorted(set(weights) - set(selected))
            if unknown:
                raise ValueError(f"stage_mixes.{name}: {unknown} are not selected sources (selected: {selected})")
            bad = sorted(k for k, w in weights.items() if not w > 0)
            if bad:
                raise ValueError(f"stage_mixes.{name}: weights must be > 0 ({bad})")

    def selected_sources(self) -> list[Source]:
        """The sources to ingest: the chosen mix (or ``sources``), filtered by modality/category."""
        from xoron_pipelines.categories import categories_for

        pool = self.data_mixes[self.mix].datasets if self.mix else self.sources
        keep = set(categories_for(self.modalities, self.categories))
        return [s for s in pool if s.category in keep]
