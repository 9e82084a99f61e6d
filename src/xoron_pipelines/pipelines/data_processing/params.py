"""Schema of ``conf/base/parameters_data_processing.yml`` (top-level key ``data_processing``).

Sources follow the ``dataset_config.datasets`` entries of the llm720 configuration guide (name,
path, subset, split, streaming, weight, text_field | text_template) plus the Xoron-Dev dataset
entry fields (format, category -> modality) and limits (max_per_dataset -> ``max_samples``,
``sample_repeat``, ``max_per_epoch``). Named mixes follow ``data_mixes`` of ``datasets.yaml``.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from xoron_pipelines.categories import CATEGORY_TO_MODALITY, DATASET_CATEGORIES, MODALITIES
from xoron_pipelines.cluster import EngineSettings
from xoron_pipelines.data.media_sources import MediaSettings, MediaSource, is_media_source
from xoron_pipelines.synth import SYNTH_TYPES
from xoron_pipelines.validation import Seed, StrictModel

FORMATS = ("jsonl", "json", "csv", "parquet", "text", "hf", "stdlib", "synth")

#: category of a source that names none: general text (``document``), or ``conversation`` for a
#: source of chat rows only (``messages_field`` without ``text_field`` / ``text_template``)
DEFAULT_CATEGORY = "document"
DEFAULT_CHAT_CATEGORY = "conversation"


class Source(StrictModel):
    """One input corpus.

    ``path`` is a local file, directory (every file in it, sorted) or glob for jsonl / json / csv /
    parquet / text (``json`` reads a JSON array, an object holding one under ``"data"``, or JSON
    Lines, as the Hugging Face ``json`` loader does; ``csv`` has a header row, every value a
    string); a Hugging Face dataset id or a ``save_to_disk`` directory for ``hf``; and
    ``code`` or ``prose`` for ``stdlib`` (the Python standard library's sources / docstrings and
    comments, built on the fly); a synthetic type for ``synth`` (its partition of the catalog
    dataset ``synth_raw``, the output of the ``synth`` pipeline, read through the catalog). Text comes from ``text_field`` or ``text_template`` (exactly one
    of them), and/or from ``messages_field`` (a chat, rendered with the chat template); a row may
    carry either, messages win when present. ``category`` defaults to ``document`` (general text),
    or ``conversation`` for a source of chat rows only.
    """

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    format: Literal["jsonl", "json", "csv", "parquet", "text", "hf", "stdlib", "synth"] = "jsonl"
    split: str = "train"
    subset: str | None = None
    streaming: bool = False
    text_field: str | None = None
    text_template: str | None = None
    messages_field: str | None = None
    weight: float = Field(default=1.0, gt=0)
    category: str | None = None
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
        if self.category is None:
            chat_only = self.messages_field is not None and self.text_field is None and self.text_template is None
            self.category = DEFAULT_CHAT_CATEGORY if chat_only else DEFAULT_CATEGORY
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


#: an entry of ``sources``: a text source, or a media source (``modality: image | video | audio``
#: and no text field; see :mod:`xoron_pipelines.data.media_sources`)
_TAGS = ("text source", "media source")
AnySource = Annotated[
    Annotated[Source, Tag(_TAGS[0])] | Annotated[MediaSource, Tag(_TAGS[1])],
    Discriminator(lambda v: _TAGS[1] if is_media_source(v) else _TAGS[0]),
]


def _without_tags(exc: ValidationError) -> ValidationError:
    """``exc`` with the union tags left out of every error location, so that an error names the
    key as written (``sources[0].weight``, not ``sources[0].text source.weight``)."""
    details = [
        InitErrorDetails(
            type=e["type"], loc=tuple(p for p in e["loc"] if p not in _TAGS), input=e["input"], ctx=e.get("ctx", {})
        )
        for e in exc.errors()
    ]
    return ValidationError.from_exception_data(exc.title, details)


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
    """Ingest, clean, deduplicate, train the tokenizer (or take ``tokenizer_name``), tokenize, mix
    and pack."""

    seed: Seed = 42
    sources: list[AnySource] = Field(default_factory=list)
    data_mixes: dict[str, DataMix] = Field(default_factory=dict)
    mix: str | None = None
    stage_mixes: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description="extra packings for the training stages (pretrain.stages.<stage>.data_mix): "
        "{mix name: {source name: weight}} over the selected sources, each packed to "
        "packed_mixes/<name>/{train,val} from the same ledger, tokenizer and split; a null weight "
        "removes a source from a mix, null removes every mix; a mix that names none of the selected "
        "sources packs all of them at their own weight (see stage_mix_weights)",
    )
    tokenizer_name: str | None = Field(
        default=None,
        min_length=1,
        description="an existing tokenizer instead of training one (seed 002/000 tokenizer_name): a "
        "local directory (tokenizer.json or a transformers tokenizer) or a Hugging Face hub id "
        "(online only); the registry's missing special tokens are added to it",
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
    media: MediaSettings = Field(
        default_factory=MediaSettings,
        description="the media tables (media_image / _video / _audio): synth media and the media sources, "
        "with the limits past which an item is quarantined",
    )
    engine: EngineSettings = Field(
        default_factory=EngineSettings,
        description="where ingest / clean / dedup and tokenization run: local (this process) or ray "
        "(Ray Data; same outputs)",
    )
    lock_timeout_s: float = Field(
        default=600.0,
        ge=0,
        allow_inf_nan=False,
        strict=True,
        description="seconds a run waits for the project's data lock (data_processing vs the runs "
        "reading its outputs) before it stops naming the holder; 0 = do not wait",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _untag(cls, values: Any, handler: Any) -> Params:
        try:
            return handler(values)
        except ValidationError as exc:
            raise _without_tags(exc) from None

    @field_validator("stage_mixes", mode="before")
    @classmethod
    def _no_mixes(cls, value: Any) -> Any:
        return {} if value is None else value  # `stage_mixes: null` (under the merge, {} keeps base's)

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
        if self.tokenizer_name is not None:
            from xoron_pipelines.data.tokenizer_training import check_existing

            check_existing(self.tokenizer_name)
        if not self.selected_sources():
            raise ValueError("no source left after the mix / modalities / categories selection")
        self._check_stage_mixes()
        return self

    def _check_stage_mixes(self) -> None:
        for name in self.stage_mixes:
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
                raise ValueError(f"stage_mixes.{name}: a mix name is a folder name (letters, digits, _ . -)")
        self.stage_mix_weights()

    def stage_mix_weights(self) -> dict[str, tuple[dict[str, float], bool]]:
        """Each stage mix as ``{source: weight}`` over the selected sources, and whether it fell back.

        Sources with a null weight are left out (that is how a conf/local file, merged into
        conf/base key by key, removes one). A mix that names none of the selected sources (one's
        own corpus replacing the base ``sources``, say) falls back to every selected source at its
        own ``weight`` (``True``), so the training stages that use it still run; a mix that names
        some selected sources and some unselected ones is an error naming the mix, the unselected
        sources and the change to make. Raises ``ValueError``."""
        selected = [s.name for s in self.selected_sources()]
        out: dict[str, tuple[dict[str, float], bool]] = {}
        for name, raw in self.stage_mixes.items():
            weights = {k: w for k, w in raw.items() if w is not None}
            if not weights:
                raise ValueError(f"stage_mixes.{name}: give at least one source with its weight")
            bad = sorted(k for k, w in weights.items() if not w > 0)
            if bad:
                raise ValueError(f"stage_mixes.{name}: weights must be > 0 ({bad})")
            unknown = sorted(set(weights) - set(selected))
            if unknown and len(unknown) == len(weights):
                out[name] = ({s.name: s.weight for s in self.selected_sources()}, True)
                continue
            if unknown:
                nulls = ", ".join(f"{k}: null" for k in unknown)
                raise ValueError(
                    f"stage_mixes.{name}: {unknown} are not selected sources (selected: {selected}). "
                    f"Drop them from the mix: in conf/local/parameters.yml set "
                    f"data_processing: {{stage_mixes: {{{name}: {{{nulls}}}}}}} (or --params "
                    f"data_processing.stage_mixes.{name}.{unknown[0]}=null ...), or name the mix's "
                    f"selected sources only"
                )
            out[name] = (weights, False)
        return out

    def selected_sources(self) -> list[Source]:
        """The text sources to ingest: the chosen mix (or ``sources``), filtered by modality/category."""
        from xoron_pipelines.categories import categories_for

        pool = self.data_mixes[self.mix].datasets if self.mix else self.sources
        keep = set(categories_for(self.modalities, self.categories))
        return [s for s in pool if isinstance(s, Source) and s.category in keep]

    def media_sources(self) -> list[MediaSource]:
        """The media sources of ``sources``, filtered by modality/category (not by ``mix``, whose
        lists hold text sources)."""
        from xoron_pipelines.categories import categories_for

        keep = set(categories_for(self.modalities, self.categories))
        return [s for s in self.sources if isinstance(s, MediaSource) and s.category in keep]

    def wants_modality(self, modality: str) -> bool:
        """Whether ``modalities`` / ``categories`` select any category of ``modality`` (the synth
        media of a modality left out are left out too)."""
        from xoron_pipelines.categories import CATEGORY_TO_MODALITY, categories_for

        return any(CATEGORY_TO_MODALITY[c] == modality for c in categories_for(self.modalities, self.categories))
