"""Text to waveform: a small VITS-like speech generator driven by the frozen LLM.

Parts (seed 000's audio decoder: "BigVGAN, direct waveform, MAS, zero-shot cloning"):

- **text encoder**: per transcript token the LLM's last hidden state and its (frozen) input
  embedding, projected, with a learned *blank* between tokens (VITS' ``add_blank``: silence and
  transitions get their own slots), then a small transformer. It predicts per slot the mean of a
  unit-variance Gaussian over log-mel frames (Glow-TTS' prior). The blanks share one learned
  mean that starts at silence, the tokens' means start at a speech level: the first alignments
  put the pauses on the blanks and the words on their tokens (from random means MAS collapses:
  one slot takes every spoken frame).
- **monotonic alignment search** (:func:`monotonic_alignment_search`, ``use_mas``): the most
  likely monotonic, surjective alignment of the frames to the slots under those Gaussians, by
  Glow-TTS' dynamic programme; ``use_mas: false`` = uniform durations.
- **duration predictor**: log-durations of the slots (trained on the alignment's durations; used
  at inference).
- **sub-slots** (``sub_slots``): a transcript token often spans a whole word, several phones; each
  slot carries K learned states that are stretched over its frames (:func:`sub_slot_weights`), so
  the frame network reads "which part of the word" directly.
- **speakers**: a table of ``audio_num_speakers`` embeddings (``audio_speaker_embed_dim``) and a
  speaker encoder (reference clip -> embedding of the same size) for zero-shot cloning; with
  ``use_in_context_audio_prompting`` the reference clip's log-mel frames are also prepended as a
  prompt that the frame transformer attends to.
- **pitch**: the frame network also predicts per-frame log-f0 and voicing (targets from the real
  clip, :func:`frame_pitch`).
- **source** (``source``): the waveform decoder's excitation at that f0 (NSF-HiFiGAN / SiFi-GAN's
  source-filter model). ``harmonic_noise`` (default): a learned DDSP source
  (:class:`HarmonicNoiseSource`, :func:`harmonic_noise`), harmonics ``k * f0`` whose amplitudes
  are a per-frame spectral envelope read at ``k * f0``, plus noise filtered by per-frame band
  magnitudes, both starting as a reading of the predicted log-mel; the corpus is a formant
  synthesiser (pulses through resonators), which this source matches. ``sine``: fixed sines
  (:func:`excitation`). Either way the source feeds the one waveform decoder, no separate vocoder.
- **waveform decoder** (BigVGAN-style, :class:`WaveformDecoder`): transposed-convolution
  upsampling by ``hop_length`` and residual blocks of anti-aliased Snake activations (2x
  upsample, Snake, low-pass 2x downsample with a Kaiser-windowed sinc) -> the waveform in
  [-1, 1]; no separate vocoder.

Tensors follow the multimodal contract: audio float32 (B, N) at 16 kHz in [-1, 1] with
``lengths`` (B,). Saved as ``config.json`` + ``model.safetensors`` (:meth:`SpeechModel.save_pretrained`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from xoron_pipelines.validation import StrictModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class SpeechArchitecture(StrictModel):
    """The speech generator's architecture knobs (the user's; ``speech_generation.model``).
    Defaults are a preset sized for a 2-core CPU; seed 000's sizes (``audio_n_mels`` 80,
    ``audio_num_speakers`` 256, ``audio_speaker_embed_dim`` 256) are reachable by setting them."""

    sample_rate: int = Field(16000, ge=1000, description="seed 000 audio_sample_rate")
    audio_n_mels: int = Field(40, ge=8, description="log-mel bands of the alignment prior, losses and encoders")
    n_fft: int = Field(1024, ge=64)
    hop_length: int = Field(256, ge=8, description="samples per frame = product of upsample_rates")
    hidden_size: int = Field(96, ge=8)
    text_layers: int = Field(2, ge=0)
    frame_layers: int = Field(2, ge=0, description="transformer layers over the frames (and the audio prompt)")
    num_heads: int = Field(2, ge=1)
    add_blank: bool = Field(True, description="a learned blank slot between transcript tokens")
    use_mas: bool = Field(True, description="seed 000: monotonic alignment search; false = uniform durations")
    audio_num_speakers: int = Field(64, ge=1, description="seed 000 (256): rows of the speaker table")
    audio_speaker_embed_dim: int = Field(64, ge=1, description="seed 000 (256)")
    use_in_context_audio_prompting: bool = Field(True, description="seed 000: reference frames as a prompt")
    prompt_frames: int = Field(48, ge=1, description="at most this many reference frames in the prompt")
    sub_slots: int = Field(
        16, ge=0, description="states per text slot stretched over its frames (a token spans several phones); 0 = none"
    )
    upsample_rates: list[int] = Field([4, 4, 4, 4], min_length=1, description="BigVGAN: [4, 4, 2, 2, 2, 2] at hop 256")
    upsample_initial_channels: int = Field(64, ge=2, description="halved at every upsampling (BigVGAN: 512-1536)")
    resblock_kernel_sizes: list[int] = Field([3], min_length=1, description="BigVGAN: [3, 7, 11]")
    resblock_dilations: list[int] = Field([1, 3], min_length=1, description="BigVGAN: [1, 3, 5]")
    source: Literal["harmonic_noise", "sine"] = Field(
        "harmonic_noise",
        description="the decoder's excitation: learned harmonics + filtered noise (DDSP) or fixed sines (NSF)",
    )
    source_harmonics: int = Field(64, ge=1, description="harmonics of f0 in the learned source")
    source_bins: int = Field(64, ge=2, description="points of the learned harmonic envelope / noise bands")

    @model_validator(mode="after")
    def _check_architecture(self) -> SpeechArchitecture:
        if math.prod(self.upsample_rates) != self.hop_length:
            raise ValueError(
                f"the product of upsample_rates {self.upsample_rates} must equal hop_length {self.hop_length}"
            )
        if any(r % 2 for r in self.upsample_rates):
            raise ValueError(f"upsample_rates must be even (kernel 2r, padding r/2): {self.upsample_rates}")
        if self.upsample_initial_channels % 2 ** len(self.upsample_rates):
            raise ValueError("upsample_initial_channels must halve evenly at every upsampling")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class SpeechConfig(SpeechArchitecture):
    """A built model's configuration (saved as ``config.json``): the architecture plus what the
    training data fixes, the conditioning LLM's hidden size and the speaker table's ids."""

    llm_hidden_size: int = Field(64, ge=1, description="the conditioning LLM's hidden size")
    speakers: list[str] = Field([], description="training speaker ids in table order")

    @model_validator(mode="after")
    def _check_speakers(self) -> SpeechConfig:
        if len(self.speakers) > self.audio_num_speakers:
            raise ValueError(
                f"{len(self.speakers)} training speakers exceed audio_num_speakers={self.audio_num_speakers}; "
                f"raise speech_generation.model.audio_num_speakers"
            )
        return self


# --------------------------------------------------------------------------- features
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """Slaney-style triangular mel filters (HTK mel scale), (n_mels, n_fft // 2 + 1)."""
    fmax = fmax or sample_rate / 2

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower = (freqs[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None]) / (edges[2:, None] - edges[1:-1, None])
    weights = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return torch.tensor(weights, dtype=torch.float32)


#: the log-mel's floor (digital silence is log(MEL_FLOOR) in every band)
MEL_FLOOR = 1e-5


class LogMel(nn.Module):
    """Waveform (B, N) -> log-mel (B, n_mels, N // hop) with frame ``t`` centred on sample ``t * hop``."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fbank", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = wave.shape[-1] // self.hop_length
        pad = self.n_fft // 2
        x = F.pad(wave[..., : frames * self.hop_length][:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(x, self.n_fft, self.hop_length, window=self.window, center=False, return_complex=True)
        mag = spec.abs()[..., :frames]
        return torch.log(torch.clamp(self.fbank @ mag, min=MEL_FLOOR))


# --------------------------------------------------------------------------- alignment
def monotonic_alignment_search(log_p: np.ndarray) -> np.ndarray:
    """Glow-TTS' monotonic alignment search.

    ``log_p`` (L, T): log-likelihood of frame ``t`` under slot ``i``. Returns the 0/1 matrix
    (L, T) of the alignment that maximises the summed log-likelihood among the monotonic,
    surjective ones (frame 0 -> slot 0, frame T-1 -> slot L-1, each next frame on the same slot
    or the next one; every slot gets at least one frame). Needs T >= L.
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    slots, frames = log_p.shape
    if slots < 1 or frames < slots:
        raise ValueError(f"alignment needs at least as many frames as slots: {frames} frames, {slots} slots")
    value = np.full((slots, frames), -np.inf)
    value[0, 0] = log_p[0, 0]
    for t in range(1, frames):
        stay = value[:, t - 1]
        move = np.concatenate([[-np.inf], value[:-1, t - 1]])
        value[:, t] = np.maximum(stay, move) + log_p[:, t]
    path = np.zeros((slots, frames), dtype=np.int64)
    i = slots - 1
    for t in range(frames - 1, -1, -1):
        path[i, t] = 1
        if t > 0 and i > 0 and (i == t or value[i - 1, t - 1] > value[i, t - 1]):
            i -= 1
    return path


def uniform_durations(slots: int, frames: int) -> np.ndarray:
    """``frames`` spread as evenly as possible over ``slots`` (the first ones get the remainder)."""
    if frames < slots:
        raise ValueError(f"{frames} frames cannot cover {slots} slots")
    return np.array([frames // slots + (i < frames % slots) for i in range(slots)], dtype=np.int64)


def expand(x: torch.Tensor, durations: torch.Tensor, frames: int) -> torch.Tensor:
    """Slot features (B, L, D) repeated by integer ``durations`` (B, L) -> (B, frames, D); frames past
    an item's total duration are zero."""
    bsz, _, dim = x.shape
    out = x.new_zeros(bsz, frames, dim)
    for b in range(bsz):
        rows = torch.repeat_interleave(x[b], durations[b].clamp(min=0), dim=0)[:frames]
        out[b, : rows.shape[0]] = rows
    return out


def slot_progress(durations: torch.Tensor, frames: int, bands: int = 8) -> torch.Tensor:
    """Where each frame lies inside its slot: (B, frames, 2 * bands + 1) = sin / cos of
    ``pi * k * progress`` (k = 1..bands, progress in (0, 1)) and the slot's log-duration; zero past
    an item's frames. A transcript token often spans a whole word: the decoder needs to know how
    far into it a frame is to say the word's phones in order."""
    bsz = durations.shape[0]
    out = torch.zeros(bsz, frames, 2 * bands + 1, device=durations.device)
    k = torch.arange(1, bands + 1, device=durations.device, dtype=torch.float32)
    for b in range(bsz):
        d = durations[b][durations[b] > 0]
        if d.numel() == 0:
            continue
        starts = torch.repeat_interleave(torch.cumsum(d, 0) - d, d)[:frames]
        lens = torch.repeat_interleave(d, d)[:frames].float()
        prog = (torch.arange(starts.numel(), device=d.device) - starts + 0.5) / lens
        angle = math.pi * prog[:, None] * k
        out[b, : prog.numel()] = torch.cat([angle.sin(), angle.cos(), lens.log()[:, None]], -1)
    return out


def sub_slot_weights(durations: torch.Tensor, frames: int, sub_slots: int) -> torch.Tensor:
    """(B, frames, sub_slots) weights that spread each slot's ``sub_slots`` states evenly over its
    frames: a frame at progress ``p`` in (0, 1) of its slot sits at ``q = p * K - 0.5`` and mixes
    the two nearest states linearly (``max(0, 1 - |q - k|)``, clamped to the first / last state at
    the ends), so a slot's states are stretched with its duration. Rows sum to 1; zero past an
    item's frames."""
    bsz = durations.shape[0]
    out = torch.zeros(bsz, frames, sub_slots, device=durations.device)
    k = torch.arange(sub_slots, device=durations.device, dtype=torch.float32)
    for b in range(bsz):
        d = durations[b][durations[b] > 0]
        if d.numel() == 0:
            continue
        starts = torch.repeat_interleave(torch.cumsum(d, 0) - d, d)[:frames]
        lens = torch.repeat_interleave(d, d)[:frames].float()
        prog = (torch.arange(starts.numel(), device=d.device) - starts + 0.5) / lens
        q = (prog * sub_slots - 0.5).clamp(0, sub_slots - 1)
        out[b, : prog.numel()] = (1 - (q[:, None] - k).abs()).clamp(min=0)
    return out


# --------------------------------------------------------------------------- pitch / excitation
F0_MIN, F0_MAX = 60.0, 400.0


def frame_pitch(
    wave: np.ndarray, sample_rate: int, hop: int, fmin: float = F0_MIN, fmax: float = F0_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame f0 (Hz, 0 where unvoiced) and voicing (bool) of ``wave``, ``wave.size // hop``
    frames, frame ``t`` a 30 ms window starting at sample ``t * hop``: the centre-clipped
    autocorrelation of :func:`~xoron_pipelines.synth.media.speech.estimate_pitch` (shortest strong
    lag, climbed to its peak; voiced when the normalised peak exceeds 0.5), frame by frame."""
    frames = wave.size // hop
    n = int(0.03 * sample_rate)
    lags = np.arange(int(sample_rate / fmax), int(sample_rate / fmin) + 1)
    padded = np.concatenate([wave.astype(np.float64), np.zeros(n + lags[-1] + 1)])
    f0 = np.zeros(frames, dtype=np.float32)
    for t in range(frames):
        frame = padded[t * hop : t * hop + n + lags[-1]]
        if float(frame[:n] @ frame[:n]) < 1e-4 * n:
            continue
        clip = 0.3 * np.abs(frame).max()
        frame = np.sign(frame) * np.maximum(np.abs(frame) - clip, 0)
        head = frame[:n]
        energy = float(head @ head) + 1e-12
        windows = np.lib.stride_tricks.sliding_window_view(frame, n)[lags]
        ac = windows @ head / energy
        best = int(np.nonzero(ac >= 0.85 * ac.max())[0][0])
        while best + 1 < ac.size and ac[best + 1] > ac[best]:
            best += 1
        if ac[best] > 0.5:
            f0[t] = sample_rate / lags[best]
    return f0, f0 > 0


def excitation(
    f0: torch.Tensor,
    voiced: torch.Tensor,
    hop: int,
    sample_rate: int,
    harmonics: int = 8,
    noise_std: float = 0.003,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """NSF's source signal: per-frame f0 (B, T) in Hz and voicing (B, T) -> (B, T * hop). Voiced
    samples are a sum of harmonics ``k = 1..harmonics`` at ``k * f0`` with amplitude ``0.1 / k``
    (harmonics above Nyquist left out) plus noise of ``noise_std``; unvoiced samples are noise of
    amplitude 0.1 / 3. f0 is linearly interpolated between frame centres, the phase is its running
    integral (continuous across frames), starting at a random phase (at 0 with a ``generator``:
    the same generator state gives the same signal)."""
    bsz, frames = f0.shape
    f0 = f0.float() * voiced.float()
    # frame t covers samples [t*hop, (t+1)*hop): interpolate between frame centres
    per_sample = F.interpolate(f0[:, None], size=frames * hop, mode="linear", align_corners=False)[:, 0]
    vmask = F.interpolate(voiced.float()[:, None], size=frames * hop, mode="nearest")[:, 0]
    start = torch.rand(bsz, 1, device=f0.device, generator=generator) if generator is None else f0.new_zeros(bsz, 1)
    phase = 2 * math.pi * (start + torch.cumsum(per_sample / sample_rate, -1))
    k = torch.arange(1, harmonics + 1, device=f0.device, dtype=torch.float32)[:, None, None]
    below_nyquist = (k * per_sample < sample_rate / 2).float()
    sines = (torch.sin(k * phase) * below_nyquist * (0.1 / k)).sum(0)
    noise = torch.randn(per_sample.shape, device=f0.device, generator=generator)
    return vmask * (sines + noise_std * noise) + (1 - vmask) * (0.1 / 3) * noise


def harmonic_noise(
    f0: torch.Tensor,
    voiced: torch.Tensor,
    harmonic_amps: torch.Tensor,
    noise_mags: torch.Tensor,
    hop: int,
    sample_rate: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A DDSP harmonic-plus-noise signal (B, T * hop) from per-frame f0 (B, T) in Hz, voicing
    (B, T), amplitudes of harmonics ``k = 1..K`` (B, T, K) and noise magnitudes on ``M`` equal
    bands from 0 to Nyquist (B, T, M).

    Voiced samples: ``sum_k a_k sin(k * phase)``, ``a_k`` linearly interpolated between frame
    centres (zero above Nyquist and where unvoiced), the phase the running integral of the
    interpolated f0 (random start, 0 with a ``generator``). Noise: white noise shaped in the
    short-time Fourier domain (frame ``hop``, window ``2 * hop``) by the magnitudes interpolated
    over frequency; a band of magnitude ``m`` has amplitude spectral density ``m`` relative to
    unit white noise. Differentiable in the amplitudes and magnitudes."""
    bsz, frames = f0.shape
    n = frames * hop
    f0 = f0.float() * voiced.float()
    per_sample = F.interpolate(f0[:, None], size=n, mode="linear", align_corners=False)[:, 0]
    start = torch.rand(bsz, 1, device=f0.device, generator=generator) if generator is None else f0.new_zeros(bsz, 1)
    phase = 2 * math.pi * (start + torch.cumsum(per_sample / sample_rate, -1))
    harmonics = harmonic_amps.shape[-1]
    k = torch.arange(1, harmonics + 1, device=f0.device, dtype=torch.float32)
    amps = harmonic_amps * (k * f0[..., None] < sample_rate / 2) * voiced[..., None]  # (B, T, K)
    out = f0.new_zeros(bsz, n)
    for lo in range(0, harmonics, 16):  # chunks bound the (B, K, N) memory of long clips
        a = F.interpolate(amps[..., lo : lo + 16].transpose(1, 2), size=n, mode="linear", align_corners=False)
        out = out + (a * torch.sin(k[lo : lo + 16, None] * phase[:, None])).sum(1)
    n_fft = 2 * hop
    window = torch.hann_window(n_fft, device=f0.device)
    noise = torch.randn(bsz, n, device=f0.device, generator=generator)
    spec = torch.stft(noise, n_fft, hop, window=window, center=True, return_complex=True)  # (B, F, T+1)
    bins = spec.shape[1]
    mags = F.interpolate(noise_mags, size=bins, mode="linear", align_corners=True).transpose(1, 2)  # (B, F, T)
    mags = torch.cat([mags, mags[..., -1:]], -1)[..., : spec.shape[-1]]
    shaped = torch.istft(spec * mags, n_fft, hop, window=window, center=True, length=n)
    return out + shaped


class HarmonicNoiseSource(nn.Module):
    """The learned source (DDSP): per frame, a spectral envelope of harmonic log-amplitudes on a
    mel-spaced grid of ``source_bins`` points (read at ``k * f0`` for ``k = 1..source_harmonics``:
    the same envelope serves every pitch, as in the corpus' source-filter synthesiser) and the
    log-magnitudes of ``source_bins`` equal noise bands, both linear maps of the frame features
    (B, D, T) whose last ``audio_n_mels`` channels are the predicted log-mel -> :func:`harmonic_noise`.

    Both maps start as a reading of that log-mel: each envelope point / noise band takes the
    log-mel interpolated at its frequency, offset so that the speech level (half the log floor)
    gives harmonics of 0.01 and noise of 0.003 (quiet: the decoder passes the source through from
    step 0); the other inputs start near zero. The log-mel is trained on every frame
    (``frame_mel``), so the source renders the spectral envelope long before the decoder learns."""

    def __init__(self, in_dim: int, cfg: SpeechArchitecture) -> None:
        super().__init__()
        self.cfg = cfg
        self.envelope = nn.Linear(in_dim, cfg.source_bins)
        self.noise = nn.Linear(in_dim, cfg.source_bins)
        mel = lambda f: 2595.0 * torch.log10(1.0 + f / 700.0)  # noqa: E731
        self.mel_max = float(mel(torch.tensor(cfg.sample_rate / 2)))
        self.mel = mel
        # the log-mel channels' centres on the mel axis (mel_filterbank's triangles)
        centres = torch.linspace(0, self.mel_max, cfg.audio_n_mels + 2)[1:-1]
        env_at = torch.linspace(0, self.mel_max, cfg.source_bins)  # the envelope's grid (mel)
        noise_at = mel(torch.linspace(0, cfg.sample_rate / 2, cfg.source_bins))  # equal bands in Hz
        speech = 0.5 * math.log(MEL_FLOOR)
        with torch.no_grad():
            for lin, grid, level in ((self.envelope, env_at, 0.01), (self.noise, noise_at, 0.003)):
                lin.weight.mul_(0.01)
                lin.weight[:, -cfg.audio_n_mels :] = _interpolation(grid, centres)
                lin.bias.fill_(math.log(level) - speech)

    def harmonic_amplitudes(self, h: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """(B, T, K) amplitudes of the harmonics of ``f0`` (B, T) from frame features (B, T, D)."""
        env = self.envelope(h)  # (B, T, bins) log-amplitudes at mel-spaced frequencies
        k = torch.arange(1, self.cfg.source_harmonics + 1, device=h.device, dtype=torch.float32)
        freq = (k * f0[..., None]).clamp(max=self.cfg.sample_rate / 2)
        pos = self.mel(freq) / self.mel_max * (self.cfg.source_bins - 1)
        lo = pos.floor().long().clamp(max=self.cfg.source_bins - 2)
        frac = pos - lo
        left, right = env.gather(-1, lo), env.gather(-1, lo + 1)
        return torch.exp(left + frac * (right - left))

    def forward(
        self, h: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Frame features (B, D, T), f0 (B, T) in Hz, voicing (B, T) -> source (B, T * hop)."""
        h = h.transpose(1, 2)
        amps = self.harmonic_amplitudes(h, f0.float() * voiced.float())
        noise = torch.exp(self.noise(h))
        return harmonic_noise(f0, voiced, amps, noise, self.cfg.hop_length, self.cfg.sample_rate, generator)


def _interpolation(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(P, C) weights of linear interpolation at ``points`` between values at increasing
    ``centres`` (constant beyond the ends); rows sum to 1."""
    pos = torch.stack([torch.searchsorted(centres, p[None])[0] for p in points]).clamp(1, centres.numel() - 1)
    left, right = centres[pos - 1], centres[pos]
    frac = ((points - left) / (right - left)).clamp(0, 1)
    out = torch.zeros(points.numel(), centres.numel())
    out[torch.arange(points.numel()), pos - 1] = 1 - frac
    out[torch.arange(points.numel()), pos] += frac
    return out


# --------------------------------------------------------------------------- BigVGAN parts
def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """BigVGAN's low-pass filter: a Kaiser-windowed sinc (kernel_size,), unit DC gain."""
    even = kernel_size % 2 == 0
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    time = (torch.arange(-half, half) + 0.5) if even else (torch.arange(kernel_size) - half)
    filt = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return filt / filt.sum()


class Snake(nn.Module):
    """``x + sin^2(alpha x) / alpha`` with a learned per-channel frequency (log-parametrised)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.log_alpha.exp()
        return x + torch.sin(alpha * x).pow(2) / (alpha + 1e-9)


class AntiAliasedSnake(nn.Module):
    """BigVGAN's alias-free activation: upsample 2x (sinc interpolation), Snake, low-pass and
    downsample 2x; the length is kept."""

    def __init__(self, channels: int, kernel_size: int = 12) -> None:
        super().__init__()
        self.act = Snake(channels)
        self.kernel_size = kernel_size
        self.register_buffer("filter", kaiser_sinc_filter(0.25, 0.3, kernel_size)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, k, ratio = x.shape[1], self.kernel_size, 2
        filt = self.filter.expand(channels, 1, k)
        pad = k // ratio - 1
        crop_l = pad * ratio + (k - ratio) // 2
        crop_r = pad * ratio + (k - ratio + 1) // 2
        up = ratio * F.conv_transpose1d(F.pad(x, (pad, pad), mode="replicate"), filt, stride=ratio, groups=channels)
        up = self.act(up[..., crop_l:-crop_r])
        down = F.pad(up, (k // 2 - 1, k // 2), mode="replicate")
        return F.conv1d(down, filt, stride=ratio, groups=channels)


class AMPBlock(nn.Module):
    """BigVGAN's anti-aliased multi-periodicity residual block: per dilation, act -> dilated conv
    -> act -> conv, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )
        self.acts = nn.ModuleList(AntiAliasedSnake(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            x = x + c2(self.acts[2 * i + 1](c1(self.acts[2 * i](x))))
        return x


class WaveformDecoder(nn.Module):
    """Frame features (B, D + n_mels, T: the frame transformer's states and the log-mel predicted
    from them) + speaker vector (B, S) + source excitation (B, T * hop, :func:`excitation` at the
    frame f0) -> waveform (B, T * hop) in [-1, 1]. NSF-HiFiGAN's source-filter design: after each
    upsampling the excitation, brought to that stage's rate by a strided convolution (kernel
    2 x stride), is added to the states, and a learned filter of it is added to the output, so the
    harmonics (the speaker's pitch) come from the source and the network shapes the spectral
    envelope (the timbre) around them."""

    def __init__(self, cfg: SpeechConfig) -> None:
        super().__init__()
        ch = cfg.upsample_initial_channels
        self.conv_pre = nn.Conv1d(cfg.hidden_size + cfg.audio_n_mels, ch, 7, padding=3)
        self.cond = nn.Conv1d(cfg.audio_speaker_embed_dim, ch, 1)
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.source_convs = nn.ModuleList()
        rates = cfg.upsample_rates
        for i, rate in enumerate(rates):
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, 2 * rate, rate, padding=rate // 2))
            # low-pass below the input's Nyquist: the transposed conv's images (harmonics of the
            # frame rate, the 62.5 Hz buzz) are removed; higher frequencies come from the source
            # and the activations
            self.register_buffer(
                f"lowpass{i}", kaiser_sinc_filter(0.5 / rate, 0.6 / rate, 6 * rate)[None, None], persistent=False
            )
            ch //= 2
            stride = math.prod(rates[i + 1 :])
            if stride > 1:
                self.source_convs.append(nn.Conv1d(1, ch, 2 * stride, stride, padding=stride // 2))
            else:
                self.source_convs.append(nn.Conv1d(1, ch, 7, padding=3))
            self.blocks.append(
                nn.ModuleList(AMPBlock(ch, k, cfg.resblock_dilations) for k in cfg.resblock_kernel_sizes)
            )
        self.act_post = AntiAliasedSnake(ch)
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3)
        # the source also reaches the output through a learned linear filter (the "filter" of the
        # source-filter model in its plainest form), initialised to pass it through: the harmonics
        # at f0 are in the waveform from the first step instead of a frame-rate (62.5 Hz) buzz
        self.source_out = nn.Conv1d(1, 1, 63, padding=31)
        with torch.no_grad():
            self.source_out.weight.zero_()
            self.source_out.weight[0, 0, 31] = 1.0
            self.source_out.bias.zero_()

    def forward(self, frames: torch.Tensor, speaker: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(frames) + self.cond(speaker[:, :, None])
        for i, (up, blocks, src) in enumerate(zip(self.ups, self.blocks, self.source_convs)):
            x = up(x)
            filt = getattr(self, f"lowpass{i}")
            k = filt.shape[-1]
            x = F.conv1d(
                F.pad(x, (k // 2 - 1, k // 2), mode="replicate"), filt.expand(x.shape[1], 1, k), groups=x.shape[1]
            )
            x = x + src(source[:, None])
            x = sum(block(x) for block in blocks) / len(blocks)
        return torch.tanh(self.conv_post(self.act_post(x)) + self.source_out(source[:, None]))[:, 0]


# --------------------------------------------------------------------------- encoders
def _positions(length: int, dim: int, device) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


def _transformer(dim: int, heads: int, layers: int) -> nn.Module | None:
    if layers == 0:
        return None
    layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def pitch_summary(f0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 2) of a per-frame f0 track (B, T) in Hz (0 = unvoiced) and its frame mask: the mean
    log-f0 of the voiced frames, centred on log 150 Hz and scaled (0 when none is voiced), and the
    voiced share of the frames."""
    voiced = (f0 > 0) & mask
    n = voiced.sum(-1).clamp(min=1)
    mean = (torch.log(f0.clamp(min=1)) * voiced).sum(-1) / n
    mean = torch.where(voiced.any(-1), (mean - math.log(150.0)) / 0.5, torch.zeros_like(mean))
    return torch.stack([mean, voiced.sum(-1) / mask.sum(-1).clamp(min=1)], -1)


class SpeakerEncoder(nn.Module):
    """Reference log-mel (B, n_mels, T) + frame mask (+ the reference's f0 track, B x T Hz) ->
    speaker embedding (B, S): convolutions, the masked mean and standard deviation over time,
    projected, plus a linear map of :func:`pitch_summary` (the speaker's pitch, the strongest
    identity cue, enters linearly so that it carries over to unseen speakers' pitches)."""

    def __init__(self, cfg: SpeechConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.convs = nn.Sequential(
            nn.Conv1d(cfg.audio_n_mels, d, 5, padding=2), nn.GELU(), nn.Conv1d(d, d, 5, padding=2), nn.GELU()
        )
        self.out = nn.Linear(2 * d, cfg.audio_speaker_embed_dim)
        self.pitch_in = nn.Linear(2, cfg.audio_speaker_embed_dim)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor, f0: torch.Tensor | None = None) -> torch.Tensor:
        h = self.convs(mel)  # (B, d, T)
        m = mask[:, None].float()
        n = m.sum(-1).clamp(min=1)
        mean = (h * m).sum(-1) / n
        std = (((h - mean[..., None]) ** 2 * m).sum(-1) / n + 1e-5).sqrt()
        out = self.out(torch.cat([mean, std], -1))
        if f0 is not None:
            out = out + self.pitch_in(pitch_summary(f0[:, : mask.shape[1]], mask[:, : f0.shape[1]]))
        return out


class SpeechModel(nn.Module):
    """The text-to-waveform generator (see the module docstring). Inputs per transcript: the LLM's
    last hidden states ``llm_hidden`` (B, L, H) and input embeddings ``token_embeds`` (B, L, H) of
    its tokens, ``token_mask`` (B, L) bool."""

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.hidden_size
        self.log_mel = LogMel(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.audio_n_mels)
        # each input normalised on its own: the input embeddings are ~50x smaller than the hidden
        # states (init std 0.02), and they are what tells the words apart
        self.hidden_norm = nn.LayerNorm(cfg.llm_hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.llm_hidden_size)
        self.text_in = nn.Linear(2 * cfg.llm_hidden_size, d)
        self.blank = nn.Parameter(torch.zeros(d))
        self.text_conv = nn.Conv1d(d, d, 3, padding=1)
        self.text_encoder = _transformer(d, cfg.num_heads, cfg.text_layers)
        self.speaker_table = nn.Embedding(cfg.audio_num_speakers, cfg.audio_speaker_embed_dim)
        nn.init.normal_(self.speaker_table.weight, std=0.1)
        self.speaker_encoder = SpeakerEncoder(cfg)
        self.speaker_proj = nn.Linear(cfg.audio_speaker_embed_dim, d)
        self.mean_proj = nn.Linear(d, cfg.audio_n_mels)
        # the alignment prior starts from silence for the blanks and from a speech level for the
        # tokens (half the floor), so that the first alignments put the pauses on the blanks and the
        # words on their tokens; learned freely from there. (From random means one slot learns
        # "average speech" and takes every spoken frame: the words never reach their tokens.)
        self.blank_mean = nn.Parameter(torch.full((cfg.audio_n_mels,), math.log(MEL_FLOOR)))
        with torch.no_grad():
            self.mean_proj.bias.fill_(0.5 * math.log(MEL_FLOOR))
        self.duration = nn.Sequential(
            nn.Conv1d(d, d, 3, padding=1), nn.GELU(), nn.Conv1d(d, d, 3, padding=1), nn.GELU(), nn.Conv1d(d, 1, 1)
        )
        self.progress_in = nn.Linear(17, d)
        self.sub_slots = nn.Linear(d, cfg.sub_slots * d) if cfg.sub_slots else None
        self.prompt_in = nn.Linear(cfg.audio_n_mels, d)
        self.prompt_type = nn.Parameter(torch.zeros(2, d))  # prompt vs target frames
        self.frame_encoder = _transformer(d, cfg.num_heads, cfg.frame_layers)
        self.mel_out = nn.Linear(d, cfg.audio_n_mels)
        with torch.no_grad():  # from the speech level, like the prior's token means
            self.mel_out.bias.fill_(0.5 * math.log(MEL_FLOOR))
        # per frame: log-f0 (in [log F0_MIN, log F0_MAX]) and the voicing logit; the speaker vector also
        # enters directly (a speaker's mean pitch is its strongest identity cue)
        self.pitch_out = nn.Linear(d, 2)
        self.pitch_speaker = nn.Linear(cfg.audio_speaker_embed_dim, 2)
        self.source = HarmonicNoiseSource(d + cfg.audio_n_mels, cfg) if cfg.source == "harmonic_noise" else None
        self.decoder = WaveformDecoder(cfg)

    # ---- text -------------------------------------------------------------------------
    def encode_text(
        self, llm_hidden: torch.Tensor, token_embeds: torch.Tensor, token_mask: torch.Tensor, speaker: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> slot features (B, S, d), slot mask (B, S), prior means (B, S, n_mels), log-durations
        (B, S). With ``add_blank`` the slots are blank, t1, blank, ..., tL, blank (S = 2L + 1)."""
        x = self.text_in(torch.cat([self.hidden_norm(llm_hidden), self.embed_norm(token_embeds)], -1))
        mask = token_mask.bool()
        if self.config.add_blank:
            bsz, length, d = x.shape
            slots = x.new_zeros(bsz, 2 * length + 1, d) + self.blank
            slots[:, 1::2] = x
            lengths = mask.sum(-1)
            mask = torch.arange(2 * length + 1, device=x.device)[None] < (2 * lengths + 1)[:, None]
            x = slots
        x = x * mask[..., None]
        x = x + self.text_conv(x.transpose(1, 2)).transpose(1, 2)
        x = x + _positions(x.shape[1], x.shape[2], x.device)
        if self.text_encoder is not None:
            x = self.text_encoder(x, src_key_padding_mask=~mask)
        x = x * mask[..., None]
        xs = x + self.speaker_proj(speaker)[:, None]
        means = self.mean_proj(xs)
        if self.config.add_blank:  # blanks: one learned (pause) spectrum
            is_blank = torch.arange(means.shape[1], device=means.device) % 2 == 0
            means = torch.where(is_blank[None, :, None], self.blank_mean.expand_as(means), means)
        log_dur = self.duration((xs.detach() * mask[..., None]).transpose(1, 2))[:, 0]
        return xs, mask, means, log_dur

    # ---- speakers / prompt -------------------------------------------------------------
    def speaker_vector(
        self,
        speaker_ids: torch.Tensor | None = None,
        ref_mel: torch.Tensor | None = None,
        ref_mask: torch.Tensor | None = None,
        use_table: torch.Tensor | None = None,
        ref_f0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The conditioning speaker vector (B, S): the table row of ``speaker_ids`` where
        ``use_table`` (B,) bool is True (default: wherever ids are given), else the speaker
        encoder's embedding of the reference clip (with its f0 track ``ref_f0`` (B, T) when given)."""
        if ref_mel is None:
            if speaker_ids is None:
                raise ValueError("a speaker needs a table id or a reference clip")
            return self.speaker_table(speaker_ids)
        encoded = self.speaker_encoder(ref_mel, ref_mask, ref_f0)
        if speaker_ids is None:
            return encoded
        pick = torch.ones_like(speaker_ids, dtype=torch.bool) if use_table is None else use_table
        return torch.where(pick[:, None], self.speaker_table(speaker_ids), encoded)

    def frames(
        self,
        slots: torch.Tensor,
        durations: torch.Tensor,
        num_frames: int,
        frame_mask: torch.Tensor,
        ref_mel: torch.Tensor | None,
        ref_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Slot features expanded to frames, through the frame transformer that also attends to
        the reference frames when in-context prompting is on, with the log-mel predicted from
        them -> (B, d + n_mels, frames): the waveform decoder's input (the last n_mels channels
        are trained towards the real log-mel, an explicit spectral envelope to render)."""
        h = expand(slots, durations, num_frames) + self.progress_in(slot_progress(durations, num_frames))
        if self.sub_slots is not None:  # each slot's K states, stretched over its frames
            k = self.config.sub_slots
            states = expand(self.sub_slots(slots), durations, num_frames).unflatten(-1, (k, -1))  # (B, T, K, d)
            h = h + (sub_slot_weights(durations, num_frames, k)[..., None] * states).sum(2)
        h = h + self.prompt_type[1]
        mask = frame_mask
        prompt_len = 0
        if self.config.use_in_context_audio_prompting and ref_mel is not None:
            p = ref_mel[..., : self.config.prompt_frames]
            prompt_len = p.shape[-1]
            prompt = self.prompt_in(p.transpose(1, 2)) + self.prompt_type[0]
            h = torch.cat([prompt, h], 1)
            mask = torch.cat([ref_mask[:, :prompt_len], frame_mask], 1)
        if self.frame_encoder is not None:
            h = h + _positions(h.shape[1], h.shape[2], h.device)
            h = self.frame_encoder(h, src_key_padding_mask=~mask)
        h = h[:, prompt_len:] * frame_mask[..., None]
        mel = self.mel_out(h) * frame_mask[..., None]
        return torch.cat([h, mel], -1).transpose(1, 2)

    def pitch(self, h: torch.Tensor, speaker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted per-frame log-f0 (B, T; natural log of Hz) and voicing logits (B, T) from the
        decoder input ``h`` (B, d + n_mels, T) of :meth:`frames` and the speaker vector (B, S)."""
        out = self.pitch_out(h[:, : self.config.hidden_size].transpose(1, 2)) + self.pitch_speaker(speaker)[:, None]
        lo, hi = math.log(F0_MIN), math.log(F0_MAX)  # a sigmoid keeps the range without dead gradients
        return lo + (hi - lo) * torch.sigmoid(out[..., 0]), out[..., 1]

    def render(
        self,
        h: torch.Tensor,
        speaker: torch.Tensor,
        f0: torch.Tensor,
        voiced: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The waveform (B, T * hop) of decoder input ``h`` at per-frame ``f0`` (Hz) / ``voiced``."""
        return self.decoder(h, speaker, self.excite(h, f0, voiced, generator))

    def excite(
        self, h: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The decoder's source (B, T * hop): the learned harmonic-plus-noise signal of ``h``
        (``source: harmonic_noise``) or the fixed sine excitation (``sine``) at ``f0`` / ``voiced``."""
        if self.source is not None:
            return self.source(h, f0, voiced, generator)
        return excitation(f0, voiced, self.config.hop_length, self.config.sample_rate, generator=generator)

    # ---- alignment ---------------------------------------------------------------------
    @torch.no_grad()
    def align(
        self, means: torch.Tensor, slot_mask: torch.Tensor, mel: torch.Tensor, frame_mask: torch.Tensor
    ) -> torch.Tensor:
        """Integer durations (B, S) of the slots: MAS on the unit-Gaussian log-likelihood of the
        log-mel frames (``use_mas``), else uniform."""
        out = torch.zeros(slot_mask.shape, dtype=torch.long)
        for b in range(means.shape[0]):
            slots, frames = int(slot_mask[b].sum()), int(frame_mask[b].sum())
            if frames < slots:
                raise ValueError(f"item {b}: {frames} audio frames cannot cover {slots} text slots")
            if self.config.use_mas:
                mu = means[b, :slots].double()
                x = mel[b, :, :frames].double()
                log_p = -0.5 * ((mu**2).sum(-1)[:, None] - 2 * mu @ x + (x**2).sum(0)[None])
                out[b, :slots] = torch.from_numpy(monotonic_alignment_search(log_p.cpu().numpy()).sum(1))
            else:
                out[b, :slots] = torch.from_numpy(uniform_durations(slots, frames))
        return out.to(means.device)

    # ---- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        llm_hidden: torch.Tensor,
        token_embeds: torch.Tensor,
        token_mask: torch.Tensor,
        speaker_ids: torch.Tensor | None = None,
        ref_wave: torch.Tensor | None = None,
        ref_lengths: torch.Tensor | None = None,
        length_scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, N) and their lengths (B,): durations from the predictor, the speaker from
        the table (``speaker_ids``) or cloned from ``ref_wave`` (zero-shot)."""
        ref_mel = ref_mask = ref_f0 = None
        if ref_wave is not None:
            ref_mel, ref_mask = self.mel_and_mask(ref_wave, ref_lengths)
            ref_f0 = self.pitch_track(ref_wave, ref_lengths)
        speaker = self.speaker_vector(speaker_ids, ref_mel, ref_mask, ref_f0=ref_f0)
        slots, slot_mask, _, log_dur = self.encode_text(llm_hidden, token_embeds, token_mask, speaker)
        durations = torch.clamp(torch.round(torch.exp(log_dur) * length_scale), min=1).long() * slot_mask
        totals = durations.sum(-1)
        num_frames = int(totals.max())
        frame_mask = torch.arange(num_frames, device=slots.device)[None] < totals[:, None]
        h = self.frames(slots, durations, num_frames, frame_mask, ref_mel, ref_mask)
        log_f0, voicing = self.pitch(h, speaker)
        generator = torch.Generator(h.device).manual_seed(0)  # the same inputs give the same waveform
        wave = self.render(h, speaker, log_f0.exp(), (voicing > 0) & frame_mask, generator)
        return wave, totals * self.config.hop_length

    def pitch_track(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-frame f0 (B, N // hop) in Hz (0 = unvoiced) of padded waveforms (:func:`frame_pitch`)."""
        hop, out = self.config.hop_length, torch.zeros(wave.shape[0], wave.shape[1] // self.config.hop_length)
        for b in range(wave.shape[0]):
            f0 = frame_pitch(wave[b, : int(lengths[b])].float().cpu().numpy(), self.config.sample_rate, hop)[0]
            out[b, : f0.size] = torch.from_numpy(f0)
        return out.to(wave.device)

    def mel_and_mask(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel (B, n_mels, T) of padded waveforms and the mask (B, T) of frames inside each length."""
        mel = self.log_mel(wave)
        frames = lengths // self.config.hop_length
        mask = torch.arange(mel.shape[-1], device=mel.device)[None] < frames[:, None].to(mel.device)
        return mel, mask

    # ---- persistence -------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` (never pickle)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.model_dump(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SpeechModel:
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = SpeechConfig.model_validate(json.loads((directory / CONFIG_FILE).read_text()))
        model = cls(cfg)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model.eval()
