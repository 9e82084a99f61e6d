"""Media records: the one schema every image / video / audio table follows, and its codecs.

A media table (Parquet through the catalog) has the columns of :data:`MEDIA_COLUMNS`; the media
itself travels as bytes in a self-describing, non-executable format:

- image: PNG (RGB, uint8);
- video: NPY of a uint8 (T, H, W, 3) array, written and read with ``allow_pickle=False``;
- audio: WAV, PCM 16-bit, mono.

Decoders check what they read (format, dtype, shape, sample rate) and raise :class:`MediaError`
with the reason, which the data pipeline turns into a quarantine row (data is never dropped
silently). Model-side tensors follow ``contract``: images (3, H, W) float in [0, 1], videos
(T, 3, H, W), audio (N,) float in [-1, 1] at :data:`SAMPLE_RATE`.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

#: column -> pyarrow-friendly type name (documentation and :func:`check_record`)
MEDIA_COLUMNS: dict[str, str] = {
    "id": "string",
    "modality": "string",  # image | video | audio
    "split": "string",  # train | heldout
    "source": "string",
    "media": "binary",
    "width": "int64",
    "height": "int64",
    "frames": "int64",
    "sample_rate": "int64",
    "duration_s": "float64",
    "caption": "string",  # description; the transcript for audio
    "question": "string",
    "answer": "string",
    "choices": "string",  # JSON list of candidate answers (the right one included), or ""
    "speaker": "string",
    "attributes": "string",  # JSON ground truth of the generator
}
MODALITIES = ("image", "video", "audio")
SAMPLE_RATE = 16000
#: hard limits a decoder enforces before allocating (a corrupt header cannot ask for 100 GB)
MAX_PIXELS = 4096 * 4096
MAX_VIDEO_VALUES = 256 * 1024 * 1024
MAX_AUDIO_SECONDS = 600


class MediaError(ValueError):
    """A media item that cannot be used; ``str(err)`` is the quarantine reason."""


# --------------------------------------------------------------------------- images
def encode_image(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes."""
    from PIL import Image

    arr = _check_frames(np.asarray(image)[None], "image")[0]
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """PNG / JPEG / any PIL-readable bytes -> uint8 (H, W, 3) RGB."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise MediaError("empty image bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise MediaError(f"image of {img.width}x{img.height} pixels exceeds {MAX_PIXELS}")
            arr = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MediaError(f"undecodable image: {err}") from err
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MediaError(f"image has no pixels: shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------- videos
def encode_video(frames: np.ndarray) -> bytes:
    """uint8 (T, H, W, 3) -> NPY bytes."""
    arr = _check_frames(np.asarray(frames), "video")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def decode_video(data: bytes) -> np.ndarray:
    """NPY bytes -> uint8 (T, H, W, 3); never unpickles."""
    if not data:
        raise MediaError("empty video bytes")
    try:
        buf = io.BytesIO(data)
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(buf)  # header only, no allocation
        if int(np.prod(shape)) > MAX_VIDEO_VALUES:
            raise MediaError(f"video of shape {shape} exceeds {MAX_VIDEO_VALUES} values")
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except MediaError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise MediaError(f"undecodable video (expected NPY of uint8 T,H,W,3): {err}") from err
    return _check_frames(arr, "video", dtype=dtype)


def _check_frames(arr: np.ndarray, what: str, dtype=None) -> np.ndarray:
    if (dtype or arr.dtype) != np.uint8:
        raise MediaError(f"{what} must be uint8, got {dtype or arr.dtype}")
    if arr.ndim != 4 or arr.shape[-1] != 3 or min(arr.shape[:3]) == 0:
        raise MediaError(f"{what} must have shape (T, H, W, 3) with T, H, W > 0, got {arr.shape}")
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- audio
def encode_audio(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """float (N,) in [-1, 1] -> WAV PCM16 mono bytes (values outside [-1, 1] are clipped)."""
    import soundfile as sf

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise MediaError(f"audio must be a non-empty mono (N,) array, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise MediaError("audio has NaN or infinite samples")
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def decode_audio(data: bytes, mono: bool = True) -> tuple[np.ndarray, int]:
    """WAV / FLAC / OGG bytes -> (float32 (N,) in [-1, 1], sample_rate); multi-channel audio is
    averaged to mono when ``mono``."""
    import soundfile as sf

    if not data:
        raise MediaError("empty audio bytes")
    try:
        info = sf.info(io.BytesIO(data))
        if info.duration > MAX_AUDIO_SECONDS:
            raise MediaError(f"audio of {info.duration:.0f} s exceeds {MAX_AUDIO_SECONDS} s")
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except MediaError:
        raise
    except (RuntimeError, ValueError, TypeError) as err:  # soundfile.LibsndfileError is a RuntimeError
        raise MediaError(f"undecodable audio: {err}") from err
    if wave.shape[0] == 0:
        raise MediaError("audio has no samples")
    wave = wave.mean(axis=1) if mono else wave
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


def resample(wave: np.ndarray, sr: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (scipy's polyphase filter) to ``target`` Hz."""
    if sr == target:
        return wave
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(sr, target)
    return resample_poly(wave, target // g, sr // g).astype(np.float32)


# --------------------------------------------------------------------------- records
def decode(record: dict[str, Any]) -> np.ndarray:
    """The media of a record, decoded by its modality (audio resampled to :data:`SAMPLE_RATE`)."""
    modality = record.get("modality")
    if modality == "image":
        return decode_image(record["media"])
    if modality == "video":
        return decode_video(record["media"])
    if modality == "audio":
        wave, sr = decode_audio(record["media"])
        return resample(wave, sr)
    raise MediaError(f"unknown modality {modality!r} (expected one of {', '.join(MODALITIES)})")


def check_record(record: dict[str, Any]) -> None:
    """Raise :class:`MediaError` naming the first problem of a record's fields (not its media)."""
    missing = [c for c in MEDIA_COLUMNS if c not in record]
    if missing:
        raise MediaError(f"missing columns {missing}")
    if record["modality"] not in MODALITIES:
        raise MediaError(f"unknown modality {record['modality']!r}")
    if record["split"] not in ("train", "heldout"):
        raise MediaError(f"split must be train or heldout, got {record['split']!r}")
    if record["choices"]:
        try:
            choices = json.loads(record["choices"])
        except json.JSONDecodeError as err:
            raise MediaError(f"choices is not JSON: {err}") from err
        if not isinstance(choices, list) or record["answer"] not in choices:
            raise MediaError("choices must be a JSON list containing the answer")


def record(**fields: Any) -> dict[str, Any]:
    """A record with every column present (defaults: "" / 0 / 0.0) and ``fields`` set."""
    out: dict[str, Any] = {}
    for col, kind in MEDIA_COLUMNS.items():
        default: Any = "" if kind == "string" else b"" if kind == "binary" else 0.0 if kind == "float64" else 0
        out[col] = fields.pop(col, default)
    if fields:
        raise TypeError(f"unknown media columns {sorted(fields)}")
    for key in ("choices", "attributes"):
        if not isinstance(out[key], str):
            out[key] = json.dumps(out[key], sort_keys=True)
    return out
