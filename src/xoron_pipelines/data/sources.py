"""Read the rows of one source and turn each into text, or into a reason why it is bad.

Every row yields exactly one :class:`RawRecord`, good or bad, so nothing is dropped silently:
malformed or too deeply nested JSON, invalid UTF-8, a row that is not an object, a missing field,
a non-string text, a template that does not apply, a malformed chat or an oversized raw record
each come back with ``reason`` set (and ``text`` None), naming file and line / row. A fault that
takes a whole file or Parquet row group with it (unreadable file, permission denied, truncated or
corrupt Parquet) comes back as one record for that file (``row`` None) or row group (``row`` its
first row not read), and reading goes on with the next one. A UTF-8 byte order mark at the start
of a file is skipped, as Python's ``utf-8-sig`` does. Rows are streamed (JSONL line by line, an
oversized line never held whole; Parquet row group by row group and batch by batch; HF by batch);
CSV row by row); only ``json`` documents (an array, not JSON Lines) are read whole (``text`` files
up to ``max_record_bytes``).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xoron_pipelines.data import stdlib_corpus
from xoron_pipelines.tokens import render_chat

log = logging.getLogger(__name__)

# Quarantine reasons produced while reading / extracting (clean.py adds "empty").
MALFORMED_JSON = "malformed_json"
INVALID_UTF8 = "invalid_utf8"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
NON_STRING_TEXT = "non_string_text"
TEMPLATE_ERROR = "template_error"
BAD_MESSAGES = "bad_messages"
OVERSIZED = "oversized"
RECORD_ERROR = "record_error"  # any other failure while extracting one record
# File-level reasons: one ledger entry stands for a whole file or Parquet row group.
UNREADABLE_FILE = "unreadable_file"
CORRUPT_ROW_GROUP = "corrupt_row_group"

RAW_SNIPPET = 300  # characters of a bad record kept in the quarantine file
DETAIL_CHARS = 1000  # characters of an error message kept in ``detail``
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20  # bytes read at a time while skipping the rest of an oversized line


@dataclass
class RawRecord:
    """One input row: where it came from, and its text or the reason it is bad.

    ``row`` is the 1-based line (jsonl) or 0-based row (json, parquet, hf; 0 for a text file);
    None for a fault that concerns the whole file."""

    file: str
    row: int | None
    text: str | None = None
    reason: str | None = None
    detail: str = ""
    raw: str = ""


def printable(value: str) -> str:
    """``value`` unchanged when it is valid Unicode text; otherwise with every lone surrogate (a
    ``"\\ud800"`` JSON escape, or an undecodable byte of a file name) spelled as its
    ``\\uNNNN`` escape, so any string can be written as UTF-8 (Parquet, JSON) and still be read."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", errors="backslashreplace").decode("utf-8")


def snippet(raw: Any, limit: int = RAW_SNIPPET, total_bytes: int | None = None) -> str:
    """At most ``limit`` characters of a bad record for the quarantine file: bytes decoded as
    UTF-8 with invalid bytes spelled ``\\xNN``, lone surrogates escaped, other values by repr;
    a cut snippet ends with a marker giving the full size (``total_bytes`` when ``raw`` is
    only the head of the record)."""
    if isinstance(raw, bytes):
        text = raw[: limit * 4].decode("utf-8", errors="backslashreplace")
        size = f"{total_bytes or len(raw)} bytes"
    else:
        text = raw if isinstance(raw, str) else _repr(raw)
        size = f"{len(text)} characters"
    if len(text) <= limit and total_bytes is None:
        return printable(text)
    return printable(text[:limit]) + f"...[cut, {size} in all]"


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to show>"


def resolve_files(source, unreadable: list[tuple[str, str]] | None = None) -> list[Path]:
    """The local files of a file-based source (a file, every file under a directory, or a glob),
    sorted; names starting with "." are left out. Raises ``FileNotFoundError`` naming the source
    and path when there are none. A directory that cannot be listed is appended to
    ``unreadable`` as ``(path, error)`` (a broken symlink is returned, so reading it reports it)."""
    path = Path(source.path)
    if path.is_file():
        return [path]
    errors: list[OSError] = []
    if path.is_dir():
        files, seen = [], set()
        for root, dirs, names in os.walk(path, onerror=errors.append, followlinks=True):
            if os.path.realpath(root) in seen:  # a symlink loop: each directory is read once
                dirs.clear()
                continue
            seen.add(os.path.realpath(root))
            files.extend(Path(root, name) for name in names if not name.startswith("."))
        files = sorted(f for f in files if _is_input(f))
        if unreadable is not None:
            unreadable.extend((str(e.filename), _error(e)) for e in errors)
    else:
        files = sorted(Path(p) for p in glob.glob(source.path, recursive=True) if _is_input(Path(p)))
    if not files and not errors:
        raise FileNotFoundError(
            f"data_processing source {source.name!r}: no input files at path {source.path!r} "
            f"(format {source.format}); check conf/base/parameters_data_processing.yml"
        )
    return files


def _is_input(path: Path) -> bool:
    """A regular file, or a broken symlink (kept so that reading it quarantines it by name);
    not a directory, FIFO, socket or device."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def check_source_paths(sources, synth: Mapping[str, Any] | None = None) -> None:
    """Fail before any work when a local source has no files, or a ``synth`` source no partition
    in ``synth`` (the loaded ``synth_raw`` dataset); hf / stdlib sources are not checked."""
    for source in sources:
        if source.format == "synth":
            if source.path not in (synth or {}):
                raise FileNotFoundError(
                    f"data_processing source {source.name!r}: the synth_raw dataset has no partition "
                    f"{source.path!r}; run the synth pipeline with synth.counts.{source.path} > 0 "
                    f"(conf/base/parameters_synth.yml), or drop the source from conf/base/parameters_data_processing.yml"
                )
        elif source.format not in ("hf", "stdlib"):
            resolve_files(source, unreadable=[])


def synth_label(kind: str, partition: Any) -> str:
    """The ``file`` of the records of a ``synth`` source: the partition's path as configured in
    the catalog (``data/01_raw/synth/<type>.jsonl``, what a ``jsonl`` source of that file names,
    so records, their train/val assignment and the packed data are the same either way), or
    ``synth_raw/<type>`` for a partition without one (rows handed over in memory)."""
    return getattr(partition, "file", None) or f"synth_raw/{kind}"


def iter_records(
    source, max_record_bytes: int, stdlib_params=None, synth: Mapping[str, Any] | None = None
) -> Iterator[RawRecord]:
    """Every row of ``source`` as a :class:`RawRecord` (text extracted, or a reason).

    A failure while extracting one row quarantines that row; a failure that stops a file's
    reader quarantines the rest of that file (``unreadable_file``, naming the last row read),
    and the next file is read. A ``synth`` source reads its partition through ``synth`` (the
    loaded ``synth_raw`` dataset: type -> partition), rows numbered from 1 like JSONL lines: a
    JSONL partition on disk line by line, like a ``jsonl`` source (a bad line is that line's
    record), one handed over in memory through its load function (a partition the dataset cannot
    load is one ``unreadable_file`` record)."""
    if source.format == "synth":
        if source.path not in (synth or {}):
            raise ValueError(
                f"source {source.name!r}: a synth source is read from the synth_raw dataset's "
                f"partition {source.path!r}, which is not given here (only data_processing reads them)"
            )
        partition = synth[source.path]
        path = getattr(partition, "path", None)
        rows = (
            _iter_jsonl(path, max_record_bytes)
            if path is not None and path.suffix == ".jsonl" and path.is_file()
            else _iter_partition(partition)
        )
        yield from _guarded(source, synth_label(source.path, partition), rows, max_record_bytes)
        return
    if source.format == "stdlib":
        for rec in stdlib_corpus.iter_rows(source.path, stdlib_params):
            file, row = rec.pop("_file"), rec.pop("_row")
            if "_error" in rec:
                yield _bad(file, row, UNREADABLE_FILE, f"file could not be read: {rec['_error']}", "")
            else:
                yield _extract(source, file, row, rec, max_record_bytes)
        return
    if source.format == "hf":
        yield from _guarded(source, source.path, _iter_hf(source), max_record_bytes)
        return
    listing, files = file_shards(source)
    yield from listing
    for path in files:
        yield from iter_file(source, path, max_record_bytes)


#: formats read file by file (:func:`file_shards`, :func:`iter_file`): the shards of a cluster engine
FILE_FORMATS = ("jsonl", "json", "csv", "parquet", "text")


def file_shards(source) -> tuple[list[RawRecord], list[Path]]:
    """The files of a file-based source (:func:`resolve_files`), and one quarantined
    ``unreadable_file`` record per directory that could not be listed (they come first)."""
    unreadable: list[tuple[str, str]] = []
    files = resolve_files(source, unreadable)
    listing = [_bad(d, None, UNREADABLE_FILE, f"directory not listed: {error}", "") for d, error in unreadable]
    return listing, files


def iter_file(source, path: Path, max_record_bytes: int) -> Iterator[RawRecord]:
    """Every row of one file of a file-based source as a :class:`RawRecord` (see iter_records)."""
    reader = {
        "jsonl": _iter_jsonl,
        "json": _iter_json,
        "csv": _iter_csv,
        "parquet": _iter_parquet,
        "text": _iter_text,
    }[source.format]
    yield from _guarded(source, str(path), reader(path, max_record_bytes), max_record_bytes)


def _guarded(source, file: str, items: Iterator[Any], max_record_bytes: int) -> Iterator[RawRecord]:
    """Records of one file's reader (``(row, value)`` pairs or ready RawRecords): a row whose
    extraction fails is quarantined as ``record_error``; an error that stops the reader is
    quarantined as ``unreadable_file`` (row None when nothing was read, else the next row)."""
    last = None
    try:
        for item in items:
            if isinstance(item, RawRecord):
                last = item.row if item.row is not None else last
                yield item
                continue
            last, value = item
            try:
                rec = _extract(source, file, last, value, max_record_bytes)
            except Exception as exc:  # noqa: BLE001 -- one record's fault stays that record's
                log.warning("source %s: %s row %s: %s", source.name, file, last, _error(exc))
                rec = _bad(file, last, RECORD_ERROR, _error(exc), _raw_json(value))
            yield rec
    except Exception as exc:  # noqa: BLE001 -- a reader failure costs (the rest of) this file only
        where = "file could not be read" if last is None else f"reading stopped after row {last}"
        log.warning("source %s: %s: %s (%s)", source.name, file, where, _error(exc))
        yield _bad(file, None if last is None else last + 1, UNREADABLE_FILE, f"{where}: {_error(exc)}", "")


def _error(exc: BaseException) -> str:
    """``Type: message`` of an exception, printable and at most DETAIL_CHARS characters."""
    return snippet(f"{type(exc).__name__}: {exc}", DETAIL_CHARS)


def _bad(file: str, row: int | None, reason: str, detail: str, raw: Any, total_bytes: int | None = None) -> RawRecord:
    """A quarantined record; ``detail`` and ``raw`` cut and made printable (:func:`snippet`)."""
    detail, raw = snippet(detail, DETAIL_CHARS), snippet(raw, total_bytes=total_bytes)
    return RawRecord(file=file, row=row, reason=reason, detail=detail, raw=raw)


def _lines(fh, limit: int) -> Iterator[tuple[bytes, int]]:
    """``(line, size)`` per line of a binary file; a line longer than ``limit`` bytes comes back
    as its first ``limit + 1`` bytes with its full size, the rest skipped without holding it."""
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        size = len(line)
        if size > limit and not line.endswith(b"\n"):
            while True:
                rest = fh.readline(_CHUNK)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
        yield line, size


def _iter_partition(partition: Any) -> Iterator[tuple[int, Any]]:
    """(row, object) per row of a dataset partition (its load function, or its rows), 1-based:
    the JSONL line number of a file without blank lines, as the synth pipeline writes them."""
    yield from enumerate(partition() if callable(partition) else partition, start=1)


def _iter_jsonl(path: Path, max_record_bytes: int) -> Iterator[Any]:
    """(line number, object) per line, 1-based; bad lines come back as RawRecords."""
    with path.open("rb") as fh:
        for lineno, (line, size) in enumerate(_lines(fh, max_record_bytes), start=1):
            if lineno == 1 and line.startswith(_BOM):
                line, size = line[len(_BOM) :], size - len(_BOM)
            if size > max_record_bytes:
                yield _bad(str(path), lineno, OVERSIZED, f"{size} bytes > {max_record_bytes}", line, size)
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
                value = json.loads(decoded)
            except (ValueError, RecursionError) as exc:
                yield _bad(str(path), lineno, MALFORMED_JSON, _json_error(exc), decoded)
                continue
            yield lineno, value


def _json_error(exc: Exception) -> str:
    """Why ``json.loads`` failed: bad JSON, nesting too deep for the parser (RecursionError), or
    an integer literal over Python's digit limit (ValueError "Exceeds the limit ...")."""
    return "nested too deeply to parse" if isinstance(exc, RecursionError) else str(exc)


def _iter_json(path: Path, max_record_bytes: int) -> Iterator[Any]:
    """What the Hugging Face ``json`` loader reads: a JSON array of objects (or an object holding
    one under "data"), rows numbered from 0, read whole; or JSON Lines (a file whose first line is
    a JSON value of its own, and not an object holding the rows under "data"), read line by line
    as a ``jsonl`` source (rows numbered from 1). A fault of a whole document is one quarantined
    record (row None)."""
    if _is_json_lines(path, max_record_bytes):
        yield from _iter_jsonl(path, max_record_bytes)
        return
    raw = path.read_bytes()
    try:
        value = json.loads(raw.removeprefix(_BOM).decode("utf-8"))
    except UnicodeDecodeError as exc:  # a ValueError too: caught first
        yield _bad(str(path), None, INVALID_UTF8, str(exc), raw)
        return
    except (ValueError, RecursionError) as exc:
        yield _bad(str(path), None, MALFORMED_JSON, _json_error(exc), raw)
        return
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        yield _bad(str(path), None, MALFORMED_JSON, "expected a JSON array of objects", raw)
        return
    yield from enumerate(value)


def _is_json_lines(path: Path, max_record_bytes: int) -> bool:
    """Whether a ``json`` file is JSON Lines: its first non-blank line parses on its own and is
    not a JSON array, nor an object holding the rows under "data" (a document on one line)."""
    with path.open("rb") as fh:
        for line, size in _lines(fh, max_record_bytes):
            line = line.removeprefix(_BOM).strip()
            if not line:
                continue
            if line.startswith(b"[") or size > max_record_bytes:
                return False
            try:
                first = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                return False
            return not (isinstance(first, dict) and isinstance(first.get("data"), list))
    return False


def _iter_csv(path: Path, max_record_bytes: int) -> Iterator[Any]:
    """(row, object) per data row of a CSV file with a header row, 0-based, as the Hugging Face
    ``csv`` loader numbers them; every value a string (an empty cell is ``""``, a missing one
    null). A row with invalid UTF-8, or larger than ``max_record_bytes``, is quarantined."""
    # the csv module refuses fields over its limit (128 KiB); our own cap is max_record_bytes
    csv.field_size_limit(max(csv.field_size_limit(), max_record_bytes + 1))
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.DictReader(text)
        for row, value in enumerate(reader):
            # cells beyond the header's columns come as a list under the key None
            cells = [v for v in value.values() if isinstance(v, str)] + list(value.get(None) or ())
            size = sum(len(c.encode("utf-8", errors="surrogateescape")) for c in cells)
            if size > max_record_bytes:
                yield _bad(str(path), row, OVERSIZED, f"{size} bytes > {max_record_bytes}", _raw_json(value))
                continue
            bad = next((c for c in cells if _has_surrogates(c)), None)
            if bad is not None:
                raw_bytes = bad.encode("utf-8", errors="surrogateescape")
                yield _bad(str(path), row, INVALID_UTF8, "invalid UTF-8 in a CSV cell", raw_bytes)
                continue
            yield row, value


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _iter_parquet(path: Path, max_record_bytes: int) -> Iterator[Any]:
    """(row, object) per row, 0-based across the file, read row group by row group; a row
    group that cannot be read (from the row where it failed) is one quarantined record, and
    the rows of the next group keep their numbers."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(str(path)) as file:  # a file without a readable footer: unreadable_file
        meta = file.metadata
        start = 0
        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            row = start
            try:
                for batch in file.iter_batches(batch_size=1024, row_groups=[group]):
                    for value in _batch_rows(batch):
                        if isinstance(value, Exception):
                            yield _bad(str(path), row, RECORD_ERROR, f"row not convertible: {_error(value)}", "")
                        else:
                            yield row, value
                        row += 1
            except Exception as exc:  # noqa: BLE001 -- ArrowInvalid, OSError: this row group only
                yield _bad(
                    str(path),
                    row,
                    CORRUPT_ROW_GROUP,
                    f"row group {group} (rows {start}-{start + n - 1}): rows {row}-{start + n - 1} unreadable: "
                    f"{_error(exc)}",
                    "",
                )
            start += n


def _batch_rows(batch) -> list[Any]:
    """The rows of an Arrow batch as dicts; a row whose values Python cannot hold (a timestamp
    past year 9999, say) comes back as its exception, the other rows as usual."""
    try:
        return batch.to_pylist()
    except Exception:  # noqa: BLE001 -- retried row by row to find the rows at fault
        rows: list[Any] = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except Exception as exc:  # noqa: BLE001
                rows.append(exc)
        return rows


def _iter_text(path: Path, max_record_bytes: int) -> Iterator[Any]:
    """A plain-text file is one document (row 0); a leading byte order mark is skipped. Of an
    oversized file only the first ``max_record_bytes + 1`` bytes are read."""
    with path.open("rb") as fh:
        raw = fh.read(max_record_bytes + len(_BOM) + 1).removeprefix(_BOM)
        if len(raw) > max_record_bytes:
            size = os.fstat(fh.fileno()).st_size
            yield _bad(str(path), 0, OVERSIZED, f"{size} bytes > {max_record_bytes}", raw, size)
            return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield _bad(str(path), 0, INVALID_UTF8, str(exc), raw)
        return
    yield 0, {"text": text}


def _iter_hf(source) -> Iterator[tuple[int, dict]]:
    """(row, object) per row of a Hugging Face dataset, 0-based: a ``save_to_disk`` directory,
    or ``load_dataset`` (hub id or local builder, streaming allowed)."""
    import datasets

    path = Path(source.path)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[source.split]
    else:
        ds = datasets.load_dataset(source.path, name=source.subset, split=source.split, streaming=source.streaming)
    if isinstance(ds, datasets.Dataset):
        row = 0
        for batch in ds.iter(batch_size=1024):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                yield row, dict(zip(keys, values))
                row += 1
    else:
        yield from enumerate(ds)


def _extract(source, file: str, row: int, value: Any, max_record_bytes: int) -> RawRecord:
    """Text of one parsed row (messages first, then text_field / text_template)."""
    if not isinstance(value, dict):
        return _bad(file, row, NOT_AN_OBJECT, f"row is a {type(value).__name__}, expected an object", _raw_json(value))
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
    """A parsed row as JSON for the quarantine file (repr when it is not JSON-serialisable)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        return _repr(value)


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
    try:
        return template.format_map(value), None, ""
    except (ValueError, TypeError) as exc:  # a format spec the value does not take, e.g. {n:d} on "x"
        return None, TEMPLATE_ERROR, f"text_template {template!r}: {_error(exc)}"


def _render_messages(messages: Any) -> tuple[str | None, str]:
    ok = (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    )
    if not ok:
        return None, "messages must be a non-empty list of {role: str, content: str}"
    try:
        return render_chat(messages), ""
    except Exception as exc:  # jinja2 TemplateError for an unknown role
        return None, f"chat template: {exc}"
