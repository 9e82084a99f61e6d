"""Read the rows of one source and turn each into text, or into a reason why it is bad.

Every row yields exactly one :class:`RawRecord`, good or bad, so nothing is dropped silently:
malformed JSON, invalid UTF-8, a missing field, a non-string text, a malformed chat or an
oversized raw record each come back with ``reason`` set (and ``text`` None). Rows are streamed
(JSONL line by line, Parquet / HF by batch); only ``json`` files are parsed whole.
"""

from __future__ import annotations

import glob
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from xoron_pipelines.data import stdlib_corpus
from xoron_pipelines.tokens import render_chat

# Quarantine reasons produced while reading / extracting (clean.py adds "empty").
MALFORMED_JSON = "malformed_json"
INVALID_UTF8 = "invalid_utf8"
MISSING_FIELD = "missing_field"
NON_STRING_TEXT = "non_string_text"
BAD_MESSAGES = "bad_messages"
OVERSIZED = "oversized"

RAW_SNIPPET = 300  # characters of a bad record kept in the quarantine file


@dataclass
class RawRecord:
    """One input row: where it came from, and its text or the reason it is bad."""

    file: str
    row: int
    text: str | None = None
    reason: str | None = None
    detail: str = ""
    raw: str = ""


def resolve_files(source) -> list[Path]:
    """The local files of a file-based source (a file, every file under a directory, or a glob),
    sorted. Raises ``FileNotFoundError`` naming the source and path when there are none."""
    path = Path(source.path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        files = sorted(Path(p) for p in glob.glob(source.path, recursive=True) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(
            f"data_processing source {source.name!r}: no input files at path {source.path!r} "
            f"(format {source.format}); check conf/base/parameters_data_processing.yml"
        )
    return files


def check_source_paths(sources) -> None:
    """Fail before any work when a local source has no files (hf / stdlib are not checked)."""
    for source in sources:
        if source.format not in ("hf", "stdlib"):
            resolve_files(source)


def iter_records(source, max_record_bytes: int, stdlib_params=None) -> Iterator[RawRecord]:
    """Every row of ``source`` as a :class:`RawRecord` (text extracted, or a reason)."""
    if source.format == "stdlib":
        for rec in stdlib_corpus.iter_rows(source.path, stdlib_params):
            yield _extract(source, rec.pop("_file"), rec.pop("_row"), rec, max_record_bytes)
        return
    if source.format == "hf":
        for i, row in enumerate(_iter_hf(source)):
            yield _extract(source, source.path, i, row, max_record_bytes)
        return
    reader = {"jsonl": _iter_jsonl, "json": _iter_json, "parquet": _iter_parquet, "text": _iter_text}[source.format]
    for path in resolve_files(source):
        for item in reader(path, max_record_bytes):
            if isinstance(item, RawRecord):
                yield item
            else:
                row, value = item
                yield _extract(source, str(path), row, value, max_record_bytes)


def _bad(file: str, row: int, reason: str, detail: str, raw: Any) -> RawRecord:
    if isinstance(raw, bytes):
        raw = raw[: RAW_SNIPPET * 4].decode("utf-8", errors="replace")
    elif not isinstance(raw, str):
        raw = repr(raw)
    return RawRecord(file=file, row=row, reason=reason, detail=detail, raw=raw[:RAW_SNIPPET])


def _iter_jsonl(path: Path, max_record_bytes: int) -> Iterator[Any]:
    """(line number, object) per line, 1-based; bad lines come back as RawRecords."""
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if len(line) > max_record_bytes:
                yield _bad(str(path), lineno, OVERSIZED, f"{len(line)} bytes > {max_record_bytes}", line)
                continue
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _bad(str(path), lineno, INVALID_UTF8, str(exc), line)
                continue
            if not decoded.strip():
                yield lineno, {}  # a blank line: no field -> quarantined as missing_field
                continue
            try:
                yield lineno, json.loads(decoded)
            except json.JSONDecodeError as exc:
                yield _bad(str(path), lineno, MALFORMED_JSON, exc.msg, decoded)


def _iter_json(path: Path, max_record_bytes: int) -> Iterator[Any]:
    """A JSON array of objects (or an object holding one under "data"); rows numbered from 0."""
    raw = path.read_bytes()
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        yield _bad(str(path), 0, INVALID_UTF8, str(exc), raw)
        return
    except json.JSONDecodeError as exc:
        yield _bad(str(path), 0, MALFORMED_JSON, exc.msg, raw)
        return
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        yield _bad(str(path), 0, MALFORMED_JSON, "expected a JSON array of objects", raw)
        return
    yield from enumerate(value)


def _iter_parquet(path: Path, max_record_bytes: int) -> Iterator[Any]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            yield row, value
            row += 1


def _iter_text(path: Path, max_record_bytes: int) -> Iterator[Any]:
    """A plain-text file is one document (row 0)."""
    raw = path.read_bytes()
    if len(raw) > max_record_bytes:
        yield _bad(str(path), 0, OVERSIZED, f"{len(raw)} bytes > {max_record_bytes}", raw)
        return
    try:
        yield 0, {"text": raw.decode("utf-8")}
    except UnicodeDecodeError as exc:
        yield _bad(str(path), 0, INVALID_UTF8, str(exc), raw)


def _iter_hf(source) -> Iterator[dict]:
    """Rows of a Hugging Face dataset: a ``save_to_disk`` directory, or ``load_dataset``
    (hub id or local builder, streaming allowed)."""
    import datasets

    path = Path(source.path)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[source.split]
    else:
        ds = datasets.load_dataset(source.path, name=source.subset, split=source.split, streaming=source.streaming)
    if isinstance(ds, datasets.Dataset):
        for batch in ds.iter(batch_size=1024):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                yield dict(zip(keys, values))
    else:
        yield from ds


def _extract(source, file: str, row: int, value: Any, max_record_bytes: int) -> RawRecord:
    """Text of one parsed row (messages first, then text_field / text_template)."""
    if not isinstance(value, dict):
        return _bad(file, row, MALFORMED_JSON, f"row is a {type(value).__name__}, expected an object", value)
    messages = value.get(source.messages_field) if source.messages_field else None
    if messages is not None:
        text, detail = _render_messages(messages)
        reason = BAD_MESSAGES if text is None else None
    elif source.text_field is not None:
        text, reason, detail = _field_text(value, source.text_field)
    elif source.text_template is not None:
        text, reason, detail = _template_text(value, source.text_template)
    else:
        text, reason, detail = None, MISSING_FIELD, f"no {source.messages_field!r} field"
    if reason is not None:
        return _bad(file, row, reason, detail, _raw_json(value))
    if len(text.encode("utf-8", errors="surrogatepass")) > max_record_bytes:
        return _bad(file, row, OVERSIZED, f"text over {max_record_bytes} bytes", text)
    return RawRecord(file=file, row=row, text=text)


def _raw_json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)[:RAW_SNIPPET]
    except (TypeError, ValueError):
        return repr(value)[:RAW_SNIPPET]


def _field_text(value: dict, field: str) -> tuple[str | None, str | None, str]:
    text = value.get(field)
    if text is None:
        return None, MISSING_FIELD, f"field {field!r} is missing or null"
    if not isinstance(text, str):
        return None, NON_STRING_TEXT, f"field {field!r} is a {type(text).__name__}"
    return text, None, ""


def _template_text(value: dict, template: str) -> tuple[str | None, str | None, str]:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    for field in sorted(fields):
        if value.get(field) is None:
            return None, MISSING_FIELD, f"template field {field!r} is missing or null"
        if not isinstance(value[field], (str, int, float)) or isinstance(value[field], bool):
            return None, NON_STRING_TEXT, f"template field {field!r} is a {type(value[field]).__name__}"
    return template.format_map(value), None, ""


def _render_messages(messages: Any) -> tuple[str | None, str]:
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not ok:
        return None, "messages must be a non-empty list of {role: str, content: str}"
    try:
        return render_chat(messages), ""
    except Exception as exc:  # jinja2 TemplateError for an unknown role
        return None, f"chat template: {exc}"
