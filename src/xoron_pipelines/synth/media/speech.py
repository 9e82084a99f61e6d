"""A synthetic spoken vocabulary: words rendered as voiced sound by a small formant synthesiser.

Each letter is one phone: vowels and voiced consonants are a glottal pulse train at the
speaker's pitch through two formant resonators (scaled by the speaker's vocal-tract factor, the
timbre), unvoiced consonants are filtered noise bursts. A :class:`Speaker` fixes pitch, timbre,
tempo and breathiness, so the same word sounds different per speaker while staying
recognisable: enough for ASR, speaker similarity and voice cloning to be measurable offline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import lfilter

SAMPLE_RATE = 16000
VOCABULARY = (
    "red", "green", "blue", "yellow", "purple", "orange",
    "circle", "square", "triangle", "one", "two", "three",
    "left", "right", "up", "down", "yes", "no", "stop", "go",
)  # fmt: skip
#: vowel and voiced-consonant formants (F1, F2) in Hz for an average adult voice
_VOICED = {
    "a": (730, 1090), "e": (530, 1840), "i": (270, 2290), "o": (570, 840), "u": (300, 870),
    "y": (300, 2200), "l": (360, 1300), "r": (420, 1300), "w": (300, 610), "m": (250, 1000),
    "n": (250, 1600), "v": (300, 1500), "d": (300, 1700), "b": (300, 900), "g": (300, 2000),
    "j": (280, 2100), "z": (300, 1800),
}  # fmt: skip
#: unvoiced consonants: (noise band low, high) in Hz, and whether it is a plosive (short burst)
_UNVOICED = {
    "s": (4000, 7000, False), "f": (1500, 6000, False), "h": (500, 3000, False), "c": (2500, 6000, True),
    "t": (3000, 7000, True), "k": (1500, 4000, True), "p": (500, 2000, True), "q": (1500, 4000, True),
    "x": (3000, 7000, False),
}  # fmt: skip


@dataclass(frozen=True)
class Speaker:
    id: str
    pitch: float  # f0 in Hz
    timbre: float  # vocal-tract scale of the formants (0.85 .. 1.2)
    tempo: float  # phone-duration multiplier
    breath: float  # noise mixed into voiced phones (0 .. 0.2)

    def attributes(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def sample_speaker(rng: np.random.Generator, speaker_id: str | None = None) -> Speaker:
    pitch = float(np.exp(rng.uniform(np.log(85), np.log(260))))
    return Speaker(
        id=speaker_id or f"spk{int(rng.integers(10**6)):06d}",
        pitch=pitch,
        timbre=float(rng.uniform(0.85, 1.2)),
        tempo=float(rng.uniform(0.85, 1.15)),
        breath=float(rng.uniform(0.0, 0.15)),
    )


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / sr)
    theta = 2 * np.pi * freq / sr
    return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)


def _phone(ch: str, spk: Speaker, rng: np.random.Generator, sr: int) -> np.ndarray:
    dur = (0.075 if ch in "aeiouy" else 0.055) * spk.tempo
    n = int(dur * sr)
    t = np.arange(n) / sr
    if ch in _VOICED:
        f1, f2 = _VOICED[ch]
        vib = 1 + 0.01 * np.sin(2 * np.pi * 5 * t)
        phase = np.cumsum(spk.pitch * vib / sr)
        pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)  # glottal impulses
        src = pulses + spk.breath * rng.standard_normal(n) * 0.3
        out = _resonator(src, f1 * spk.timbre, 90, sr) + 0.6 * _resonator(src, f2 * spk.timbre, 120, sr)
        out *= 1.0 if ch in "aeiouy" else 0.5
    elif ch in _UNVOICED:
        lo, hi, plosive = _UNVOICED[ch]
        noise = rng.standard_normal(n)
        out = _resonator(noise, (lo + hi) / 2 * spk.timbre, hi - lo, sr) * 0.15
        if plosive:
            out[int(0.4 * n) :] *= 0.1  # short burst, then near-silence
    else:
        out = np.zeros(n)
    ramp = min(n // 4, int(0.005 * sr))
    env = np.ones(n)
    if ramp:
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
    return out * env


def speak(
    words: list[str] | str, speaker: Speaker, sample_rate: int = SAMPLE_RATE, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Waveform float32 (N,) peak-normalised to 0.9, and each word's (start, end) sample."""
    words = words.split() if isinstance(words, str) else list(words)
    rng = rng or np.random.default_rng(0)
    gap = np.zeros(int(0.08 * sample_rate * speaker.tempo))
    pieces, bounds, pos = [np.zeros(int(0.05 * sample_rate))], [], int(0.05 * sample_rate)
    for word in words:
        wave = np.concatenate([_phone(ch, speaker, rng, sample_rate) for ch in word.lower()])
        pieces += [wave, gap]
        bounds.append((pos, pos + wave.size))
        pos += wave.size + gap.size
    out = np.concatenate(pieces)
    peak = np.abs(out).max()
    out = out / peak * 0.9 if peak > 0 else out
    return out.astype(np.float32), bounds


def estimate_pitch(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, fmin: float = 60, fmax: float = 400) -> float:
    """Median f0 (Hz) over voiced 30 ms frames by centre-clipped autocorrelation; 0.0 when nothing
    is voiced."""
    n = int(0.03 * sample_rate)
    lags = np.arange(int(sample_rate / fmax), int(sample_rate / fmin) + 1)
    f0s = []
    for start in range(0, wave.size - n - lags[-1], n):
        frame = wave[start : start + n + lags[-1]].astype(np.float64)
        if float(frame[:n] @ frame[:n]) < 1e-4 * n:
            continue
        clip = 0.3 * np.abs(frame).max()  # centre clipping (Sondhi 1968) removes formant ringing
        frame = np.sign(frame) * np.maximum(np.abs(frame) - clip, 0)
        head = frame[:n]
        energy = float(head @ head) + 1e-12
        ac = np.array([head @ frame[lag : lag + n] for lag in lags]) / energy
        best = int(np.nonzero(ac >= 0.85 * ac.max())[0][0])  # the shortest strong lag: no subharmonics
        while best + 1 < ac.size and ac[best + 1] > ac[best]:  # climb to that peak's top
            best += 1
        if ac[best] > 0.5:
            f0s.append(sample_rate / lags[best])
    return float(np.median(f0s)) if f0s else 0.0
