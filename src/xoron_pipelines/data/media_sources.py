"""The user's media in ``data_processing.sources``, and the media tables data_processing writes.

A media source is an entry of the ``sources`` list with ``modality: image | video | audio`` (and
no text field), reading one of:

- ``hf``: a Hugging Face dataset id (online) or a ``save_to_disk`` / ``load_dataset``-able local
  directory, ``split`` / ``subset``; the media column (``media_column``, default: the first
  ``Image`` / ``Audio`` feature; for video a column of NPY bytes, default ``video``) is read
  undecoded (``Image(decode=False)`` / ``Audio(decode=False)``: bytes or a file path), and
  decoded here once, to validate it;
- ``path``: a Parquet file, directory or glob with a bytes column ``media_column`` (plain bytes,
  or a ``{bytes, path}`` struct as Hugging Face writes Image / Audio columns);
- ``folder``: a directory of media files (images: png jpg jpeg bmp gif webp tif tiff; video: npy
  of uint8 (T, H, W, 3); audio: wav flac ogg mp3) with captions, either ``<name>.txt`` beside each
  file or a ``metadata.jsonl`` / ``captions.jsonl`` (one ``{"file_name": ..., "caption": ...}``
  object per line, relative to that file's directory, as Hugging Face's imagefolder reads them).

Each item is normalised to :data:`xoron_pipelines.data.media.MEDIA_COLUMNS` (PNG / NPY / WAV PCM16
mono 16 kHz: other image formats are re-encoded, other sample rates resampled; sizes, frames and
durations are measured from the media), or refused with a ``reason`` (:data:`REASONS`) and the
detail; :func:`collect` turns refusals into quarantine rows, so in = kept + quarantined for every
source, modality and split.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from xoron_pipelines.categories import CATEGORY_TO_MODALITY, DATASET_CATEGORIES
from xoron_pipelines.data import media
from xoron_pipelines.validation import StrictModel

# ---------------------------------------------------------------- quarantine reasons
UNREADABLE_FILE = "unreadable_file"  # a file / dataset row that cannot be read at all
UNSUPPORTED_FORMAT = "unsupported_format"  # a file of a folder source with no media extension
BAD_METADATA = "bad_metadata"  # a malformed line of metadata.jsonl / captions.jsonl
MISSING_MEDIA = "missing_media"  # no bytes (empty, null, or a path that does not exist)
UNDECODABLE = "undecodable"  # the bytes are not an image / NPY video / audio file
WRONG_SHAPE = "wrong_shape"  # sizes or frame count outside the media limits, wrong dtype / layout
TOO_LONG = "too_long"  # audio longer than media.max_audio_seconds
MISSING_CAPTION = "missing_caption"  # no caption (transcript) or an empty one
BAD_RECORD = "bad_record"  # a field of the wrong type, choices without the answer, unknown split
DUPLICATE_ID = "duplicate_id"  # an id already kept in this modality's table
REASONS = (
    UNREADABLE_FILE,
    UNSUPPORTED_FORMAT,
    BAD_METADATA,
    MISSING_MEDIA,
    UNDECODABLE,
    WRONG_SHAPE,
    TOO_LONG,
    MISSING_CAPTION,
    BAD_RECORD,
    DUPLICATE_ID,
)
#: extra columns of a quarantine row (after MEDIA_COLUMNS)
QUARANTINE_EXTRA = {"reason": "string", "detail": "string", "origin": "string"}

EXTENSIONS = {
    "image": (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
    "video": (".npy",),
    "audio": (".wav", ".flac", ".ogg", ".mp3"),
}
#: files of a folder source that are not media and not refused (captions, metadata, notes)
SIDE_FILES = (".txt", ".json", ".jsonl", ".csv", ".md")
METADATA_FILES = ("metadata.jsonl", "captions.jsonl")
#: caption columns tried, in order, when ``caption_column`` is not given
CAPTION_COLUMNS = ("caption", "text", "transcription", "transcript", "sentence")
DEFAULT_CATEGORY = {"image": "vision", "video": "video", "audio": "voice_asr"}


class MediaSource(StrictModel):
    """One media source of ``data_processing.sources`` (give exactly one of hf / path / folder)."""

    name: str = Field(min_length=1)
    modality: Literal["image", "video", "audio"]
    hf: str | None = Field(default=None, min_length=1)
    path: str | None = Field(default=None, min_length=1)
    folder: str | None = Field(default=None, min_length=1)
    split: str = "train"  # hf: the dataset split to read
    subset: str | None = None  # hf: the configuration name
    heldout: bool = False  # its rows are held-out (evaluation) items rather than training items
    media_column: str | None = None
    caption_column: str | None = None
    question_column: str | None = None
    answer_column: str | None = None
    choices_column: str | None = None
    speaker_column: str | None = None
    category: str | None = None
    max_samples: int | None = Field(default=None, ge=1)  # kept items cap

    @model_validator(mode="after")
    def _check(self) -> MediaSource:
        given = [k for k in ("hf", "path", "folder") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"media source {self.name!r}: give exactly one of hf, path (Parquet) or folder; got {given or 'none'}"
            )
        if self.category is None:
            self.category = DEFAULT_CATEGORY[self.modality]
        if self.category not in DATASET_CATEGORIES or CATEGORY_TO_MODALITY[self.category] != self.modality:
            raise ValueError(
                f"media source {self.name!r}: category {self.category!r} is not a {self.modality} category "
                f"(one of {[c for c, m in CATEGORY_TO_MODALITY.items() if m == self.modality]})"
            )
        if self.path is not None and self.media_column is None:
            raise ValueError(f"media source {self.name!r}: a Parquet source (path) needs media_column")
        if self.answer_column is None and (self.question_column or self.choices_column):
            raise ValueError(f"media source {self.name!r}: question_column / choices_column need answer_column")
        return self

    @property
    def format(self) -> str:
        return "hf" if self.hf else "parquet" if self.path else "folder"

    @property
    def location(self) -> str:
        return self.hf or self.path or self.folder or ""


def is_media_source(entry: Any) -> bool:
    """Whether a raw ``sources`` entry is a media source: a media modality and no text field."""
    if isinstance(entry, MediaSource):
        return True
    if not isinstance(entry, dict):
        return False
    text_keys = ("text_field", "text_template", "messages_field")
    return entry.get("modality") in media.MODALITIES and not any(k in entry for k in text_keys)


class MediaSettings(StrictModel):
    """Limits of the media tables (``data_processing.media``); an item outside them is quarantined."""

    include_synth: bool = True
    min_image_size: int = Field(default=8, ge=1)
    max_image_size: int = Field(default=1024, ge=1)
    max_video_frames: int = Field(default=256, ge=1)
    max_audio_seconds: float = Field(default=30.0, gt=0, le=media.MAX_AUDIO_SECONDS)

    @model_validator(mode="after")
    def _range(self) -> MediaSettings:
        if self.min_image_size > self.max_image_size:
            raise ValueError(f"min_image_size ({self.min_image_size}) > max_image_size ({self.max_image_size})")
        return self


class Refused(Exception):
    """An item that cannot be used: ``reason`` (one of :data:`REASONS`) and ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Item:
    """One input item before normalisation: where it comes from and its raw fields (``media``
    bytes or None; ``caption`` etc. as read), or the reason it could not be read."""

    origin: str
    fields: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    detail: str = ""


# ---------------------------------------------------------------- normalisation
def _media_error_reason(err: media.MediaError, modality: str) -> str:
    """The quarantine reason of a decoder's refusal: a size / layout limit (the decoders say
    "must", "exceeds" or "no pixels") or anything else (undecodable)."""
    text = str(err)
    if "exceeds" in text and modality == "audio":
        return TOO_LONG
    return WRONG_SHAPE if ("must" in text or "exceeds" in text or "no pixels" in text) else UNDECODABLE


def _check_size(h: int, w: int, settings: MediaSettings) -> None:
    lo, hi = settings.min_image_size, settings.max_image_size
    if min(h, w) < lo or max(h, w) > hi:
        raise Refused(WRONG_SHAPE, f"{h}x{w} pixels outside [min_image_size, max_image_size] = [{lo}, {hi}]")


def normalise_media(modality: str, data: Any, settings: MediaSettings) -> tuple[bytes, dict[str, Any]]:
    """Validated canonical bytes of one item (decoded once) and its measured metadata
    (width, height, frames, sample_rate, duration_s); raises :class:`Refused`."""
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    if not isinstance(data, bytes) or not data:
        raise Refused(MISSING_MEDIA, "no media bytes" if not data else f"media is a {type(data).__name__}, not bytes")
    try:
        if modality == "image":
            arr = media.decode_image(data)
            _check_size(arr.shape[0], arr.shape[1], settings)
            canonical = _is_png_rgb(data)
            return (data if canonical else media.encode_image(arr)), {"height": arr.shape[0], "width": arr.shape[1]}
        if modality == "video":
            arr = media.decode_video(data)
            if arr.shape[0] > settings.max_video_frames:
                raise Refused(WRONG_SHAPE, f"{arr.shape[0]} frames > max_video_frames ({settings.max_video_frames})")
            _check_size(arr.shape[1], arr.shape[2], settings)
            return data, {"frames": arr.shape[0], "height": arr.shape[1], "width": arr.shape[2]}
        wave, sr = media.decode_audio(data)
        seconds = wave.size / sr
        if seconds > settings.max_audio_seconds:
            raise Refused(TOO_LONG, f"{seconds:.1f} s > max_audio_seconds ({settings.max_audio_seconds})")
        if not np.isfinite(wave).all():
            raise Refused(UNDECODABLE, "audio has NaN or infinite samples")
        if not _is_canonical_wav(data):  # another format, rate or channel count: resampled, re-encoded
            wave = media.resample(wave, sr)
            data = media.encode_audio(wave, media.SAMPLE_RATE)
        return data, {"sample_rate": media.SAMPLE_RATE, "duration_s": wave.size / media.SAMPLE_RATE}
    except media.MediaError as err:
        raise Refused(_media_error_reason(err, modality), str(err)) from err


def _is_png_rgb(data: bytes) -> bool:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.format == "PNG" and img.mode == "RGB"


def _is_canonical_wav(data: bytes) -> bool:
    import soundfile as sf

    info = sf.info(io.BytesIO(data))
    return (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, media.SAMPLE_RATE)


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Refused(BAD_RECORD, f"{what} is a {type(value).__name__}, not a string")
    return value


def to_record(item: Item, source_name: str, modality: str, split: str, settings: MediaSettings) -> dict[str, Any]:
    """A media record (MEDIA_COLUMNS) of one readable item; raises :class:`Refused`."""
    f = item.fields
    caption = _text(f.get("caption"), "caption").strip()
    if not caption:
        raise Refused(MISSING_CAPTION, "no caption" + (" (transcript)" if modality == "audio" else ""))
    data, measured = normalise_media(modality, f.get("media"), settings)
    choices = f.get("choices")
    if isinstance(choices, list | tuple | np.ndarray):  # a list column (hf / Parquet): as JSON
        choices = json.dumps([str(c) for c in choices])
    rec = media.record(
        id=_text(f.get("id"), "id") or f"{source_name}:{item.origin}",
        modality=modality,
        split=split,
        source=source_name,
        media=data,
        caption=caption,
        question=_text(f.get("question"), "question"),
        answer=_text(f.get("answer"), "answer"),
        choices=_text(choices, "choices"),
        speaker=_text(f.get("speaker"), "speaker"),
        attributes=_text(f.get("attributes"), "attributes"),
        **measured,
    )
    try:
        media.check_record(rec)
    except media.MediaError as err:
        raise Refused(BAD_RECORD, str(err)) from err
    return rec


# ---------------------------------------------------------------- readers
def iter_items(source: MediaSource) -> Iterator[Item]:
    """Every item of a source, good or not (a file that cannot be read is one item with its reason)."""
    if source.format == "hf":
        yield from _iter_hf(source)
    elif source.format == "parquet":
        yield from _iter_parquet(source)
    else:
        yield from _iter_folder(source)


def _columns_of(source: MediaSource, row: dict[str, Any], media_value: Any) -> dict[str, Any]:
    """The raw fields of one table row (hf / parquet)."""
    caption_col = source.caption_column or next((c for c in CAPTION_COLUMNS if c in row), None)
    out = {"media": media_value, "caption": row.get(caption_col) if caption_col else None}
    for key in ("question", "answer", "choices", "speaker"):
        col = getattr(source, f"{key}_column")
        if col is not None:
            if col not in row:
                raise Refused(BAD_RECORD, f"no column {col!r} ({key}_column)")
            out[key] = row[col]
    if source.caption_column is not None and source.caption_column not in row:
        raise Refused(MISSING_CAPTION, f"no column {source.caption_column!r} (caption_column)")
    return out


def _missing_columns(source: MediaSource, names: list[str], media_column: str) -> list[str]:
    """The configured columns (media, caption, question, ...) that a table lacks."""
    wanted = [media_column] + [
        getattr(source, f"{k}_column") for k in ("caption", "question", "answer", "choices", "speaker")
    ]
    return [c for c in wanted if c is not None and c not in names]


def _media_bytes(value: Any, base: Path | None = None) -> Any:
    """Bytes of a media cell: plain bytes, or a ``{bytes, path}`` struct (bytes first, else the file)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        path = value.get("path")
        if path:
            file = Path(path) if Path(path).is_absolute() or base is None else base / path
            try:
                return file.read_bytes()
            except OSError as err:
                raise Refused(MISSING_MEDIA, f"cannot read {path}: {err.strerror or err}") from err
        return None
    return value


def _iter_hf(source: MediaSource) -> Iterator[Item]:
    import datasets

    loc = Path(source.hf)
    try:
        if loc.is_dir() and ((loc / "state.json").is_file() or (loc / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(loc))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[source.split]
        else:
            ds = datasets.load_dataset(source.hf, name=source.subset, split=source.split)
    except (KeyError, FileNotFoundError, ValueError) as err:
        raise ValueError(f"media source {source.name!r}: cannot open hf dataset {source.hf!r}: {err}") from err
    column = source.media_column or _feature_column(ds.features, source)
    missing = _missing_columns(source, list(ds.features), column)
    if missing:
        raise ValueError(f"media source {source.name!r}: no column {missing} in the dataset's {list(ds.features)}")
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))  # decoded here, once
    elif isinstance(feature, datasets.Audio):
        ds = ds.cast_column(column, datasets.Audio(decode=False))
    for i, row in enumerate(ds):
        try:
            yield Item(f"row {i}", _columns_of(source, row, _media_bytes(row[column], loc if loc.is_dir() else None)))
        except Refused as err:
            yield Item(f"row {i}", reason=err.reason, detail=err.detail)


def _feature_column(features: Any, source: MediaSource) -> str:
    import datasets

    kind = {"image": datasets.Image, "audio": datasets.Audio}.get(source.modality)
    found = [name for name, feat in features.items() if kind is not None and isinstance(feat, kind)]
    if found:
        return found[0]
    if source.modality in features:
        return source.modality
    raise ValueError(
        f"media source {source.name!r}: no {source.modality} column found in {list(features)}; set media_column"
    )


def _iter_parquet(source: MediaSource) -> Iterator[Item]:
    import pyarrow.parquet as pq

    from xoron_pipelines.data.sources import resolve_files

    for file in resolve_files(source):
        row = 0
        try:
            pf = pq.ParquetFile(file)
            missing = _missing_columns(source, pf.schema_arrow.names, source.media_column)
            if missing:  # the whole file is refused, naming the columns
                raise ValueError(f"no column {missing} in {pf.schema_arrow.names}")
            for batch in pf.iter_batches(batch_size=256):
                for values in batch.to_pylist():
                    origin = f"{file.name}:{row}"
                    row += 1
                    try:
                        yield Item(origin, _columns_of(source, values, _media_bytes(values[source.media_column])))
                    except Refused as err:
                        yield Item(origin, reason=err.reason, detail=err.detail)
        except (OSError, ValueError) as err:  # unreadable / corrupt file, or no media column: the rest of it
            yield Item(f"{file.name}:{row}-", reason=UNREADABLE_FILE, detail=str(err)[:1000])


def _iter_folder(source: MediaSource) -> Iterator[Item]:
    root = Path(source.folder)
    if not root.is_dir():
        raise FileNotFoundError(f"data_processing media source {source.name!r}: no folder {source.folder!r}")
    captions: dict[Path, dict[str, Any]] = {}
    bad_lines: list[Item] = []
    files: list[Path] = []
    for dirpath, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(dirpath, name)
            if name in METADATA_FILES:
                _read_metadata(path, root, captions, bad_lines)
            else:
                files.append(path)
    yield from bad_lines
    for path in files:
        rel = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        if suffix in SIDE_FILES:
            continue
        if suffix not in EXTENSIONS[source.modality]:
            yield Item(
                rel, reason=UNSUPPORTED_FORMAT, detail=f"not a {source.modality} file ({suffix or 'no extension'})"
            )
            continue
        try:
            data = path.read_bytes()
        except OSError as err:
            yield Item(rel, reason=UNREADABLE_FILE, detail=str(err))
            continue
        meta = captions.get(path.resolve(), {})
        try:
            caption = _folder_caption(source, path, meta)
        except Refused as err:
            yield Item(rel, {"media": data}, reason=err.reason, detail=err.detail)
            continue
        fields = {"media": data, "caption": caption, "id": f"{source.name}:{rel}"}
        for key in ("question", "answer", "choices", "speaker"):
            col = getattr(source, f"{key}_column") or key
            if col in meta:
                fields[key] = meta[col]
        yield Item(rel, fields)


def _read_metadata(path: Path, root: Path, captions: dict, bad: list[Item]) -> None:
    rel = path.relative_to(root).as_posix()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        bad.append(Item(rel, reason=BAD_METADATA, detail=str(err)))
        return
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            name = obj["file_name"] if isinstance(obj, dict) else None
            if not isinstance(name, str):
                raise ValueError("expected an object with a string file_name")
        except (ValueError, KeyError) as err:
            bad.append(Item(f"{rel}:{i}", reason=BAD_METADATA, detail=f"{type(err).__name__}: {err}"[:1000]))
            continue
        captions[(path.parent / name).resolve()] = obj


def _folder_caption(source: MediaSource, path: Path, meta: dict[str, Any]) -> Any:
    cols = (source.caption_column,) if source.caption_column else CAPTION_COLUMNS
    for col in cols:
        if col in meta:
            return meta[col]
    txt = path.with_suffix(".txt")
    if txt.is_file():
        try:
            return txt.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise Refused(MISSING_CAPTION, f"caption file {txt.name} unreadable: {err}") from err
    return None


def check_paths(sources: list[MediaSource]) -> None:
    """Fail before any work when a local media source is not there (``folder`` not a directory,
    ``path`` matching no file), naming the source; ``hf`` sources are checked when opened."""
    from xoron_pipelines.data.sources import resolve_files

    for source in sources:
        if source.folder is not None and not Path(source.folder).is_dir():
            raise FileNotFoundError(
                f"data_processing media source {source.name!r}: folder {source.folder!r} is not a directory"
            )
        if source.path is not None:
            resolve_files(source)


# ---------------------------------------------------------------- tables
@dataclass
class MediaTables:
    """Outcome for one modality: kept records, quarantine rows, and the count table
    (modality, source, split, status, reason, count)."""

    kept: pd.DataFrame
    quarantined: pd.DataFrame
    counts: pd.DataFrame


def _quarantine_row(item: Item, source: str, modality: str, split: str, reason: str, detail: str) -> dict:
    raw = item.fields.get("media")
    row = media.record(
        id=str(item.fields.get("id") or f"{source}:{item.origin}"),
        modality=modality,
        split=split,
        source=source,
        media=bytes(raw) if isinstance(raw, bytes | bytearray | memoryview) else b"",
    )
    cap = item.fields.get("caption")
    row["caption"] = cap if isinstance(cap, str) else ""
    return {**row, "reason": reason, "detail": detail[:1000], "origin": item.origin}


def collect(
    modality: str,
    synth: pd.DataFrame | None,
    sources: list[MediaSource],
    settings: MediaSettings,
    progress: bool = False,
) -> MediaTables:
    """The media table of ``modality``: the synth rows (when ``settings.include_synth``) and
    every item of the ``sources`` of that modality, each decoded once and kept or quarantined
    with its reason; ``max_samples`` caps a source's kept items (the rest are not read)."""
    from xoron_pipelines.datasets.media_table import empty_table

    kept: list[dict] = []
    refused: list[dict] = []
    counts: Counter = Counter()
    ids: set[str] = set()

    def take(item: Item, source: str, split: str) -> bool:
        if item.reason is None:
            try:
                rec = to_record(item, source, modality, split, settings)
                if rec["id"] in ids:
                    raise Refused(DUPLICATE_ID, f"id {rec['id']!r} already kept")
            except Refused as err:
                item.reason, item.detail = err.reason, err.detail
            else:
                ids.add(rec["id"])
                kept.append(rec)
                counts[(source, rec["split"], "kept", "")] += 1
                return True
        refused.append(_quarantine_row(item, source, modality, split, item.reason, item.detail))
        counts[(source, split, "quarantined", item.reason)] += 1
        return False

    if settings.include_synth and synth is not None and len(synth):
        for i, row in enumerate(tqdm(synth.to_dict("records"), desc=f"media {modality} synth", disable=not progress)):
            split = row.get("split") if row.get("split") in ("train", "heldout") else "train"
            take(Item(f"row {i}", dict(row)), str(row.get("source") or "synth"), split)
    for source in sources:
        if source.modality != modality:
            continue
        split = "heldout" if source.heldout else "train"
        n_kept = 0
        for item in tqdm(iter_items(source), desc=f"media {modality} {source.name}", disable=not progress):
            n_kept += take(item, source.name, split)
            if source.max_samples is not None and n_kept >= source.max_samples:
                break
    kept_df = pd.DataFrame(kept) if kept else empty_table()
    q_df = pd.DataFrame(refused) if refused else empty_table(QUARANTINE_EXTRA)
    rows = [
        {"modality": modality, "source": s, "split": sp, "status": st, "reason": r, "count": n}
        for (s, sp, st, r), n in sorted(counts.items())
    ]
    count_df = pd.DataFrame(rows, columns=["modality", "source", "split", "status", "reason", "count"])
    return MediaTables(kept_df, q_df, count_df)
