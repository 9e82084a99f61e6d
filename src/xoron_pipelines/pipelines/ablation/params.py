"""Schema of ``conf/base/parameters_ablation.yml`` (top-level key ``ablation``).

Every variant trains with the settings of one pretrain stage (``base_stage``, default
``language``: ``pretrain.stages.language``), the ablation-wide ``train`` overrides on top (a short
run, the same for every variant), then its own overrides:

* ``model``: XoronConfig fields over ``params:model``'s ``overrides`` (same preset), e.g.
  ``{num_experts: 2}``; for a baseline variant, the Xoron config the baseline is matched to;
* ``baseline``: ``gpt2`` trains transformers' GPT2LMHeadModel of the same parameter count instead
  of our model (:mod:`xoron_pipelines.model.baseline`);
* ``data_mix``: a stage mix of ``data_processing.stage_mixes`` (null = the main packing);
* ``train``: any knob of the training engine (``TrainConfig``; its seed spellings accepted).

The merged settings are validated with the rest of the parameters, before any node runs
(:meth:`Params.check_references`): a bad key or value names the variant and the key.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from xoron_pipelines.model.config import ModelParams
from xoron_pipelines.training.config import TrainConfig
from xoron_pipelines.training.schema import STAGES, StageParams
from xoron_pipelines.validation import StrictModel

#: a variant name is its Kedro namespace (``ablation.<name>``) and its MLflow run name
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
VARIANT_KEYS = ("name", "baseline", "model", "data_mix", "train")


def _overrides_model() -> type[StrictModel]:
    """``TrainOverrides``: every TrainConfig field (with its seed aliases, type and constraints),
    optional; the cross-field rules (warm-up shorter than the run, ...) are checked on the
    merged settings."""
    fields: dict[str, Any] = {}
    for name, info in TrainConfig.model_fields.items():
        field = copy.copy(info)
        field.default, field.default_factory = None, None
        fields[name] = (info.annotation | None, field)
    return create_model("TrainOverrides", __base__=StrictModel, __doc__="TrainConfig overrides", **fields)


TrainOverrides = _overrides_model()


def _first_error(exc: ValueError) -> str:
    """A pydantic ValidationError as ``<dotted key>: <message>`` (its first error); another
    ValueError as its message."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        err = errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        return f"{key}: {msg}" if key else msg
    return str(exc)


class Variant(StrictModel):
    """One ablation variant (see the module doc)."""

    name: str = Field(description="namespace ablation.<name>, MLflow run and table row")
    baseline: Literal["gpt2"] | None = Field(None, description="train this baseline model instead of ours")
    model: dict[str, Any] = Field(default_factory=dict, description="XoronConfig overrides over params:model")
    data_mix: str | None = Field(None, min_length=1, description="stage mix to train on (null: main packing)")
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="TrainConfig overrides")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        """Unknown keys and bad training overrides, named with the variant's name."""
        if isinstance(value, dict):
            name = value.get("name", "?")
            unknown = [k for k in value if k not in VARIANT_KEYS]
            if unknown:
                raise ValueError(
                    f"variant {name!r}: unknown key {unknown[0]!r} (a variant has {', '.join(VARIANT_KEYS)})"
                )
            try:
                TrainOverrides.model_validate(value.get("train") or {})
            except ValidationError as exc:
                raise ValueError(f"variant {name!r}: train.{_first_error(exc)}") from None
        return value

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"variant name {value!r} must match {NAME_PATTERN.pattern} (it is a Kedro namespace)")
        return value


class Params(StrictModel):
    """``ablation``: the variants and the settings they share."""

    base_stage: str = Field(
        "language", description="pretrain.stages.<base_stage>: the stage settings every variant starts from"
    )
    train: TrainOverrides = Field(
        default_factory=TrainOverrides, description="TrainConfig overrides for every variant (a short run)"
    )
    eval_rows: int | None = Field(
        64, gt=0, description="validation rows scored for the table's val loss and bits per byte; null = all"
    )
    eval_batch_size: int = Field(16, gt=0, description="rows per forward pass when scoring")
    variants: list[Variant] = Field(min_length=1, description="the variants compared, in table order")

    @field_validator("base_stage")
    @classmethod
    def _causal_lm_stage(cls, value: str) -> str:
        stages = [s for s, kind in STAGES["pretrain"].items() if kind == "causal_lm"]
        if value not in stages:
            raise ValueError(f"base_stage {value!r} is not a pretrain stage ({stages})")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Params:
        seen: set[str] = set()
        for variant in self.variants:
            if variant.name in seen:
                raise ValueError(f"variants: the name {variant.name!r} is used twice (names are namespaces)")
            seen.add(variant.name)
        return self

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise ValueError(f"no ablation variant {name!r}: the variants are {self.names()}")

    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    # ---- the merged settings of a variant ----------------------------------------------------------
    def stage_params(self, name: str, pretrain: Any) -> StageParams:
        """The training settings of variant ``name``: ``pretrain.stages.<base_stage>``, then
        ``train``, then the variant's ``data_mix`` / ``train`` (always enabled, kind causal_lm)."""
        variant = self.variant(name)
        where = f"variants[{self.names().index(name)}] ({name}): "
        base = pretrain.stages[self.base_stage] if hasattr(pretrain, "stages") else pretrain["stages"][self.base_stage]
        settings = StageParams.model_validate(base).model_dump(mode="python")
        settings["enabled"] = True
        settings["train"].update(self.train.model_dump(exclude_unset=True))
        settings["train"].update(variant.train.model_dump(exclude_unset=True))
        if "data_mix" in variant.model_fields_set:
            settings["data_mix"] = variant.data_mix
        try:
            return StageParams.model_validate(settings).check_kind("causal_lm")
        except ValueError as exc:
            raise ValueError(f"{where}{_first_error(exc)}") from None

    def model_params(self, name: str, model: Any) -> ModelParams:
        """``params:model`` with variant ``name``'s ``model`` overrides merged into its overrides."""
        variant = self.variant(name)
        base = ModelParams.model_validate(model)
        try:
            return ModelParams(preset=base.preset, overrides={**base.overrides, **variant.model})
        except ValueError as exc:
            msg = _first_error(exc).removeprefix("overrides: ").replace("model.overrides.", "model.")
            raise ValueError(f"variants[{self.names().index(name)}] ({name}): {msg}") from None

    def check_references(self, groups: dict[str, Any]) -> None:
        """Every variant's merged model and training settings are valid, and its data_mix names a
        mix of ``data_processing.stage_mixes`` (called by validation with all groups)."""
        pretrain, model, processing = groups.get("pretrain"), groups.get("model"), groups.get("data_processing")
        for variant in self.variants:
            if model is not None:
                self.model_params(variant.name, model)
            if pretrain is None:
                continue
            stage = self.stage_params(variant.name, pretrain)
            if processing is not None and stage.data_mix is not None and stage.data_mix not in processing.stage_mixes:
                raise ValueError(
                    f"variants[{self.names().index(variant.name)}] ({variant.name}): data_mix {stage.data_mix!r} "
                    f"is not one of data_processing.stage_mixes {sorted(processing.stage_mixes)}"
                )
