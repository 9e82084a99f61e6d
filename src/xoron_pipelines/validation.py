"""Parameter validation: every top-level parameter group has a pydantic schema.

Each ``conf/base/parameters_<group>.yml`` holds one top-level key ``<group>`` whose schema is
the ``Params`` class of ``xoron_pipelines.pipelines.<group>.params`` (or, for groups that are
not a pipeline, a class registered with :func:`register`). :class:`ParameterValidationHook`
validates all groups when the Kedro context is created, before any node runs, and nodes call
``Params.model_validate`` on their own group to get typed access.

An unknown key, a wrong type or an impossible value raises :class:`ParameterError` naming the
dotted key and the conf file it comes from. A schema may also define ``check_references(groups)``,
called with all validated groups, for values that must name something in another group (a
training stage's ``data_mix`` must be one of ``data_processing.stage_mixes``).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

_EXTRA: dict[str, type[BaseModel]] = {}

# Top-level keys that Kedro or its plugins may inject and that are not ours to validate.
_IGNORED_GROUPS: frozenset[str] = frozenset()


class StrictModel(BaseModel):
    """Base class of every parameter schema: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


class ParameterError(ValueError):
    """A parameter in conf/ is unknown, of the wrong type, or impossible."""


def register(group: str):
    """Register a schema for a parameter group that is not a pipeline (e.g. ``model``)."""

    def deco(cls: type[BaseModel]) -> type[BaseModel]:
        _EXTRA[group] = cls
        return cls

    return deco


def conf_file(group: str) -> str:
    return f"conf/base/parameters_{group}.yml"


def schemas() -> dict[str, type[BaseModel]]:
    """All known parameter groups -> schema, discovered from the pipelines' ``params`` modules."""
    from xoron_pipelines import pipelines as pipelines_pkg

    found: dict[str, type[BaseModel]] = {}
    for mod in pkgutil.iter_modules(pipelines_pkg.__path__):
        try:
            params_mod = importlib.import_module(f"{pipelines_pkg.__name__}.{mod.name}.params")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"{mod.name}.params"):
                continue
            raise
        found[mod.name] = params_mod.Params
    # groups registered outside the pipelines (model library, ...)
    for extra in ("xoron_pipelines.model.config",):
        try:
            importlib.import_module(extra)
        except ModuleNotFoundError:
            pass
    found.update(_EXTRA)
    return found


def _format_loc(group: str, loc: tuple[Any, ...]) -> str:
    out = group
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate_group(group: str, values: Any, schema: type[BaseModel] | None = None) -> BaseModel:
    """Validate one group; raise ParameterError naming key and conf file on failure."""
    schema = schema or schemas().get(group)
    if schema is None:
        raise ParameterError(f"Unknown parameter group '{group}' (no schema for it); check {conf_file(group)}")
    try:
        return schema.model_validate(values if values is not None else {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _format_loc(group, err["loc"])
            got = err.get("input")
            got_s = "" if err["type"] == "missing" else f" (got {got!r:.80})"
            lines.append(f"  - {key}: {err['msg']}{got_s}")
        raise ParameterError(
            f"Invalid parameters in {conf_file(group)}:\n" + "\n".join(lines)
        ) from None


def validate_all(params: dict[str, Any]) -> dict[str, BaseModel]:
    """Validate every top-level group of ``params`` (Kedro's merged parameters)."""
    known = schemas()
    out: dict[str, BaseModel] = {}
    for group, values in params.items():
        if group in _IGNORED_GROUPS:
            continue
        if group not in known:
            raise ParameterError(
                f"Unknown top-level parameter '{group}': expected one of {sorted(known)} "
                f"(each lives in conf/base/parameters_<name>.yml)"
            )
        out[group] = validate_group(group, values, known[group])
    for group, model in out.items():  # references between groups, e.g. a stage's data_mix
        check = getattr(model, "check_references", None)
        if callable(check):
            try:
                check(out)
            except ValueError as exc:
                raise ParameterError(f"Invalid parameters in {conf_file(group)}:\n  - {group}.{exc}") from None
    return out
