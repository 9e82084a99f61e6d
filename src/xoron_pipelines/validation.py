"""Parameter validation: every top-level parameter group has a pydantic schema.

Each ``conf/base/parameters_<group>.yml`` holds one top-level key ``<group>`` whose schema is
listed in :data:`xoron_pipelines.schemas.SCHEMAS` (the ``Params`` class of
``pipelines/<group>/params.py``, or a library schema such as ``model``'s).
:class:`~xoron_pipelines.hooks.ParameterValidationHook` validates all groups once, when the Kedro
context is created, before any node runs, and hands each node the validated objects of its
``params:`` inputs; a node's ``Params.model_validate(params)`` on such an object returns it as
is (pydantic does not revalidate instances), so validation runs once per run.

An unknown key, a wrong type or an impossible value raises :class:`ParameterError` naming the
dotted key and where it comes from: the conf files that set its group (conf/local is merged into
conf/base key by key, settings.py, so both may hold it: :func:`parameter_files`), or the command
line for a value given with ``kedro run --params``. A schema may also define ``check_references(groups)``, called with all
validated groups, for values that must name something in another group (a training stage's
``data_mix`` must be one of ``data_processing.stage_mixes``).

Every schema derives from :class:`StrictModel`, whose types are strict: an ``int`` knob takes
only an integer (not ``true``, ``2.0`` or ``"2"``), a ``float`` knob an integer or a float (not a
boolean or a string), and no float anywhere may be ``inf`` or ``nan``. A field whose YAML value
must be converted (a ``tuple`` from a YAML list, a ``Path`` from a string) opts out with
``Field(strict=False)``. Seeds use :data:`Seed` (an integer in [0, 2**32 - 1], what numpy accepts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Top-level keys that Kedro or its plugins may inject and that are not ours to validate.
_IGNORED_GROUPS: frozenset[str] = frozenset()


#: largest usable seed: numpy's legacy seeding (and so every seeded shuffle) takes a uint32
MAX_SEED = 2**32 - 1

#: type of every seed knob: an integer in [0, 2**32 - 1] (strict: no bool, float or string)
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class StrictModel(BaseModel):
    """Base class of every parameter schema: unknown keys are errors, values are validated,
    types are strict (no bool for a number, no float for an int) and floats are finite."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False, strict=True, allow_inf_nan=False)


class ParameterError(ValueError):
    """A parameter (in conf/ or given on the command line) is unknown, of the wrong type, or impossible."""


def conf_file(group: str) -> str:
    return f"conf/base/parameters_{group}.yml"


def parameter_files(config_loader: Any) -> dict[str, list[str]]:
    """Top-level parameter group -> the conf files that set it, in merge order (base first, then
    the run environment, e.g. ``conf/base/parameters_pretrain.yml``, ``conf/local/parameters.yml``),
    from a Kedro ``OmegaConfigLoader``. Used to name where a bad value may come from once conf/local
    is merged into conf/base key by key. Empty when the loader has no local ``conf_source``."""
    import yaml

    root = Path(str(getattr(config_loader, "conf_source", "") or ""))
    if not root.is_dir():
        return {}
    envs = [getattr(config_loader, "base_env", None) or "base"]
    run_env = getattr(config_loader, "env", None) or getattr(config_loader, "default_run_env", None)
    if run_env and run_env not in envs:
        envs.append(run_env)
    out: dict[str, list[str]] = {}
    for env in envs:
        env_dir = root / env
        files = {p for pattern in ("parameters*", "parameters*/**/*", "**/parameters*") for p in env_dir.glob(pattern)}
        for path in sorted(f for f in files if f.is_file() and f.suffix in (".yml", ".yaml", ".json")):
            if any(part.startswith(".") for part in path.relative_to(env_dir).parts):
                continue
            try:
                tree = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue  # the config loader itself reports an unreadable file
            for group in tree if isinstance(tree, dict) else ():
                out.setdefault(str(group), []).append(path.relative_to(root.parent).as_posix())
    return out


def _origin(group: str, files: Mapping[str, Sequence[str]] | None) -> str:
    """Where group ``group`` comes from: its conf files (merged in this order), or the one
    conventional file when they are not known."""
    named = list((files or {}).get(group) or ())
    return " + ".join(named) if named else conf_file(group)


COMMAND_LINE = "the command line (--params)"


def _dotted(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested mapping: ``{"a": {"b": 1}}`` -> ``["a.b"]``."""
    out: list[str] = []
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.extend(_dotted(value, name) if isinstance(value, Mapping) and value else [name])
    return out


def _command_line_note(key: str, runtime_keys: list[str]) -> str:
    """Where a bad value at ``key`` comes from when ``kedro run --params`` is involved: the key
    itself (or a section above it) was given on the command line, or, for an error of a whole
    section (two knobs that contradict each other), the command line set keys inside it."""
    key = key.replace("[", ".").replace("]", "")
    if any(k == key or key.startswith(k + ".") for k in runtime_keys):
        return f" [from {COMMAND_LINE}]"
    inside = [k for k in runtime_keys if k.startswith(key + ".")]
    return f" [{COMMAND_LINE} sets {', '.join(inside)}]" if inside else ""


def schemas() -> dict[str, type[BaseModel]]:
    """All known parameter groups -> schema: :data:`xoron_pipelines.schemas.SCHEMAS`."""
    # imported here, not at the top: every schema module imports StrictModel from this module
    from xoron_pipelines.schemas import SCHEMAS

    return dict(SCHEMAS)


def _format_loc(group: str, loc: tuple[Any, ...]) -> str:
    out = group
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate_group(
    group: str,
    values: Any,
    schema: type[BaseModel] | None = None,
    runtime_params: Mapping[str, Any] | None = None,
    files: Mapping[str, Sequence[str]] | None = None,
) -> BaseModel:
    """Validate one group; raise ParameterError naming each bad key and where it comes from:
    the group's conf files (``files``: group -> files, from :func:`parameter_files`; default its
    conf/base file), or the command line for keys in ``runtime_params`` (``--params``)."""
    schema = schema or schemas().get(group)
    if schema is None:
        raise ParameterError(f"Unknown parameter group '{group}' (no schema for it); check {_origin(group, files)}")
    try:
        return schema.model_validate(values if values is not None else {})
    except ValidationError as exc:
        runtime_keys = _dotted(runtime_params or {})
        lines, cli = [], False
        for err in exc.errors():
            key = _format_loc(group, err["loc"])
            got = err.get("input")
            got_s = "" if err["type"] == "missing" or isinstance(got, Mapping) else f" (got {got!r:.80})"
            note = _command_line_note(key, runtime_keys)
            cli = cli or bool(note)
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  - {key}: {msg}{got_s}{note}")
        origin = f"{_origin(group, files)} or {COMMAND_LINE}" if cli else _origin(group, files)
        raise ParameterError(f"Invalid parameters in {origin}:\n" + "\n".join(lines)) from None


def validate_all(
    params: dict[str, Any],
    runtime_params: Mapping[str, Any] | None = None,
    files: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, BaseModel]:
    """Validate every top-level group of ``params`` (Kedro's merged parameters); ``runtime_params``
    (the ``--params`` of ``kedro run``) and ``files`` (group -> conf files, :func:`parameter_files`)
    only serve to say where a bad value came from."""
    known = schemas()
    runtime_params = runtime_params or {}
    out: dict[str, BaseModel] = {}
    for group, values in params.items():
        if group in _IGNORED_GROUPS:
            continue
        if group not in known:
            where = (
                COMMAND_LINE
                if group in runtime_params
                else " + ".join((files or {}).get(group) or ()) or "conf/base/parameters_<name>.yml"
            )
            raise ParameterError(
                f"Unknown top-level parameter '{group}' (from {where}): expected one of {sorted(known)} "
                f"(each lives in conf/base/parameters_<name>.yml)"
            )
        out[group] = validate_group(group, values, known[group], runtime_params, files)
    for group, model in out.items():  # references between groups, e.g. a stage's data_mix
        check = getattr(model, "check_references", None)
        if callable(check):
            try:
                check(out)
            except ValueError as exc:
                origin = _origin(group, files)
                origin = f"{origin} or {COMMAND_LINE}" if group in runtime_params else origin
                raise ParameterError(f"Invalid parameters in {origin}:\n  - {group}.{exc}") from None
    return out
