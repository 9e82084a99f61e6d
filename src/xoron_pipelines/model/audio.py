"""Audio encoder (seed 003: raw-waveform tokenizer + Conformer with RMLA) and its CTC ASR head.

Input: float32 waveforms (B, N) at ``audio_sample_rate`` in [-1, 1] and ``lengths`` (B,) in
samples. Output: :class:`EncoderOutput` with one frame per 20 ms (``frame_lengths = lengths //
hop``, hop = 320 samples at 16 kHz), ``mask`` True on valid frames, ``extras["ctc_logits"]``
(B, T, len(ASR_ALPHABET)) and ``extras["frame_lengths"]`` (B,).

Front ends (``use_raw_waveform``), both at the same hop, both independent of padding:
- raw: wav2vec2's feature-encoder geometry (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2: a
  25 ms window every 20 ms) with few channels and a per-frame LayerNorm; the utterance is first
  normalised to zero mean / unit variance over its valid samples and centred by 2.5 ms of zeros.
- mel: Whisper's log-mel (25 ms Hann STFT every 10 ms, slaney mel bank of ``audio_n_mels`` bins,
  log10 floored 8 below the utterance's max, ``(x + 4) / 4``; equal to
  ``WhisperFeatureExtractor`` on a zero-padded clip), then a conv subsampler (k3, k3 stride 2).

Conformer block (Gulati et al., 2020): ``x + FFN/2``, ``x + RMLA``, ``x + conv``, ``x + FFN/2``,
LayerNorm. The conv module is pointwise -> GLU -> depthwise conv -> LayerNorm -> SiLU ->
pointwise; it uses LayerNorm rather than BatchNorm so padded frames never enter any statistic.
RMLA is DeepSeek's multi-head latent attention made bidirectional: keys and values come from a
latent of rank ``audio_kv_lora_rank`` (down-projection, RMSNorm, up-projection), and a decoupled
rotary key shared by all heads gives relative positions (1D RoPE over the frame index).
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from xoron_pipelines.model.attention import MLA_NORM_EPS
from xoron_pipelines.model.norm import RMSNorm
from xoron_pipelines.model.rope import apply_axial_rope, axial_rope_cos_sin, axial_rope_freqs, grid_coords
from xoron_pipelines.validation import StrictModel


# EncoderOutput: moves to model/vision.py at merge
@dataclass
class EncoderOutput:
    """What every encoder returns: features (B, N, hidden_size), mask (B, N) bool (True = valid)
    or None, and extras (e.g. ``ctc_logits``, ``router_probs``)."""

    features: torch.Tensor
    mask: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------- config
FRAME_HOP_MS = 20  # encoder frame rate: one frame per 20 ms (50 Hz)
RAW_KERNELS = (10, 3, 3, 3, 3, 2, 2)  # wav2vec2 feature encoder at 16 kHz: 400-sample window
RAW_STRIDES = (5, 2, 2, 2, 2, 2, 2)  # ... and 320-sample (20 ms) hop


class AudioEncoderConfig(StrictModel):
    """Audio encoder knobs: seed 000's names where it has one, a 2-core-CPU preset as defaults."""

    audio_sample_rate: int = Field(16000, gt=0)  # Hz of the input waveform; a multiple of 16000
    audio_n_mels: int = Field(80, gt=0)  # mel bins of the log-mel front end (use_raw_waveform: false)
    # Maximum number of encoder frames (20 ms each: 1000 = 20 s). A longer clip is an error
    # (crop or split it first), never silently cut.
    audio_max_length: int = Field(1000, gt=0)
    use_raw_waveform: bool = True  # true: learned raw-waveform tokenizer; false: log-mel + conv subsampler
    audio_kv_lora_rank: int = Field(32, gt=0)  # RMLA latent rank of keys/values (seed: 256)
    hidden_size: int = Field(96, gt=0)
    num_layers: int = Field(2, gt=0)  # Conformer blocks
    num_heads: int = Field(4, gt=0)
    conv_kernel_size: int = Field(15, gt=0)  # depthwise conv of the Conformer conv module (odd)
    feature_channels: int = Field(64, gt=0)  # channels of the raw-waveform conv stack

    @model_validator(mode="after")
    def _check(self) -> AudioEncoderConfig:
        if self.audio_sample_rate % 16000:
            raise ValueError(
                f"audio_sample_rate must be a multiple of 16000 Hz (whole-sample 25 ms windows and 20 ms hops "
                f"for both front ends), got {self.audio_sample_rate}; resample the audio"
            )
        head_dim, rem = divmod(self.hidden_size, self.num_heads)
        if rem or head_dim % 4:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) / num_heads ({self.num_heads}) must be a whole multiple of 4 "
                f"(each head splits into content and rotary halves of even size)"
            )
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd (same-length depthwise conv), got {self.conv_kernel_size}")
        return self

    @property
    def hop(self) -> int:
        """Samples per encoder frame (20 ms)."""
        return self.audio_sample_rate * FRAME_HOP_MS // 1000


# ----------------------------------------------------------------------------------- front ends
def _zero_padding(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Zero x (B, T, ...) where valid (B, T) is False."""
    return x.masked_fill(~valid.view(*valid.shape, *([1] * (x.dim() - 2))), 0.0)


class RawWaveformTokenizer(nn.Module):
    """Strided conv stack (wav2vec2's geometry, scaled by sample rate) -> (B, T, hidden)."""

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        scale = cfg.audio_sample_rate // 16000
        kernels, strides = (RAW_KERNELS[0] * scale, *RAW_KERNELS[1:]), (RAW_STRIDES[0] * scale, *RAW_STRIDES[1:])
        c = cfg.feature_channels
        self.convs = nn.ModuleList(
            nn.Conv1d(1 if i == 0 else c, c, k, s) for i, (k, s) in enumerate(zip(kernels, strides))
        )
        self.norms = nn.ModuleList(nn.LayerNorm(c) for _ in kernels)
        window = kernels[-1]
        for k, s in reversed(list(zip(kernels[:-1], strides[:-1]))):
            window = (window - 1) * s + k
        self.pad = (window - cfg.hop) // 2  # centre frame f on samples [f*hop - pad, f*hop + hop + pad)
        self.proj = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, cfg.hidden_size))

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(wave.shape[1], device=wave.device) < lengths[:, None]
        n = lengths[:, None].to(wave.dtype)
        mean = (wave * valid).sum(1, keepdim=True) / n
        var = (((wave - mean) * valid) ** 2).sum(1, keepdim=True) / n
        return self.tokenize(_zero_padding((wave - mean) / torch.sqrt(var + 1e-7), valid))

    def tokenize(self, wave: torch.Tensor) -> torch.Tensor:
        """Normalised waveform (B, N) -> (B, >= N // hop, hidden); frame f sees only samples
        [f * hop - pad, (f + 1) * hop + pad), 25 ms centred on its 20 ms."""
        h = F.pad(wave, (self.pad, self.pad))[:, None, :]  # (B, 1, N)
        for conv, norm in zip(self.convs, self.norms):
            h = F.gelu(norm(conv(h).transpose(1, 2))).transpose(1, 2)  # LN + GELU channels-last (fast)
        return self.proj(h.transpose(1, 2))


class LogMelFrontEnd(nn.Module):
    """Whisper's log-mel spectrogram (10 ms hop) + conv subsampler (stride 2) -> (B, T, hidden)."""

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        sr = cfg.audio_sample_rate
        self.n_fft, self.hop = sr // 40, sr // 100  # 25 ms window, 10 ms hop
        bank = mel_filter_bank(
            num_frequency_bins=1 + self.n_fft // 2,
            num_mel_filters=cfg.audio_n_mels,
            min_frequency=0.0,
            max_frequency=sr / 2,
            sampling_rate=sr,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("mel_filters", torch.tensor(bank, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.conv1 = nn.Conv1d(cfg.audio_n_mels, cfg.hidden_size, 3, padding=1)
        self.conv2 = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, 3, stride=2, padding=1)

    def log_mel(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, M) with M = max(lengths) // (10 ms hop); frames past an item's own
        ``lengths // hop`` are 0. The clip is followed by zeros (as Whisper pads it). Always float32,
        autocast or not."""
        with torch.autocast(wave.device.type, enabled=False):
            return self._log_mel(wave.float(), lengths)

    def _log_mel(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(wave.shape[1], device=wave.device) < lengths[:, None]
        wave = F.pad(wave * valid, (0, self.n_fft // 2))
        frames = int(lengths.max()) // self.hop
        stft = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True)
        power = stft[..., :frames].abs() ** 2
        logmel = (self.mel_filters.T @ power).clamp(min=1e-10).log10()
        frame_ok = (torch.arange(frames, device=wave.device) < (lengths // self.hop)[:, None])[:, None]
        peak = logmel.masked_fill(~frame_ok, float("-inf")).amax(dim=(1, 2), keepdim=True)
        logmel = (torch.maximum(logmel, peak - 8.0) + 4.0) / 4.0
        return logmel.masked_fill(~frame_ok, 0.0)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv2(F.gelu(self.conv1(self.log_mel(wave, lengths)))))
        return h.transpose(1, 2)


# ----------------------------------------------------------------------------------- Conformer
class RMLASelfAttention(nn.Module):
    """Bidirectional multi-head latent attention (DeepSeek-V2 MLA names) with 1D RoPE on the
    decoupled rotary dims: head_dim = hidden / heads splits into content (head_dim) + rotary
    (head_dim / 2) for queries and keys; values are head_dim wide."""

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        hidden, heads, rank = cfg.hidden_size, cfg.num_heads, cfg.audio_kv_lora_rank
        self.num_heads, self.kv_lora_rank = heads, rank
        self.nope = self.v_dim = hidden // heads
        self.rope = self.nope // 2
        self.q_proj = nn.Linear(hidden, heads * (self.nope + self.rope), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(rank, eps=MLA_NORM_EPS)
        self.kv_b_proj = nn.Linear(rank, heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(heads * self.v_dim, hidden, bias=False)
        self.inv_freqs = axial_rope_freqs(self.rope, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        bsz, tlen, _ = x.shape
        q = self.q_proj(x).view(bsz, tlen, self.num_heads, -1).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(c_kv)).view(bsz, tlen, self.num_heads, -1).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        cos, sin = axial_rope_cos_sin(grid_coords(tlen, device=x.device), self.inv_freqs)
        q_pe = apply_axial_rope(q_pe, cos, sin, self.inv_freqs)
        k_pe = apply_axial_rope(k_pe[:, None], cos, sin, self.inv_freqs).expand(-1, self.num_heads, -1, -1)
        out = F.scaled_dot_product_attention(
            torch.cat([q_nope, q_pe], -1),
            torch.cat([k_nope, k_pe], -1),
            v,
            attn_mask=valid[:, None, None, :],
            scale=(self.nope + self.rope) ** -0.5,
        )
        return self.o_proj(out.transpose(1, 2).reshape(bsz, tlen, -1))


class ConformerBlock(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        h = cfg.hidden_size

        def ffn() -> nn.Module:
            return nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 4 * h), nn.SiLU(), nn.Linear(4 * h, h))

        self.ffn1, self.ffn2 = ffn(), ffn()
        self.attn_norm, self.attn = nn.LayerNorm(h), RMLASelfAttention(cfg)
        self.conv_norm, self.pointwise_in = nn.LayerNorm(h), nn.Linear(h, 2 * h)
        k = cfg.conv_kernel_size
        self.depthwise = nn.Conv1d(h, h, k, padding=k // 2, groups=h)
        self.depthwise_norm, self.pointwise_out = nn.LayerNorm(h), nn.Linear(h, h)
        self.final_norm = nn.LayerNorm(h)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.attn(self.attn_norm(x), valid)
        c = _zero_padding(F.glu(self.pointwise_in(self.conv_norm(x)), dim=-1), valid)  # padding never leaks
        c = self.depthwise(c.transpose(1, 2)).transpose(1, 2)
        x = x + self.pointwise_out(F.silu(self.depthwise_norm(c)))
        x = x + 0.5 * self.ffn2(x)
        return self.final_norm(x)


# ----------------------------------------------------------------------------------- encoder
ASR_ALPHABET: tuple[str, ...] = ("<blank>", *string.ascii_lowercase, " ", "'")  # index 0 = CTC blank
_CHAR_ID = {c: i for i, c in enumerate(ASR_ALPHABET) if i}


class AudioEncoder(nn.Module):
    """Front end -> Conformer blocks -> features (B, T, hidden) and CTC logits over ASR_ALPHABET."""

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.config, self.hidden_size = cfg, cfg.hidden_size
        self.front_end = RawWaveformTokenizer(cfg) if cfg.use_raw_waveform else LogMelFrontEnd(cfg)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_layers))
        self.ctc_head = nn.Linear(cfg.hidden_size, len(ASR_ALPHABET))

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames of clips of ``lengths`` samples: ``lengths // hop`` (one per whole 20 ms)."""
        return lengths // self.config.hop

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """x (B, N) waveform; lengths (B,) valid samples per item (default: all N)."""
        cfg = self.config
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"audio encoder expects a float waveform batch (B, N), got {x.dtype} {tuple(x.shape)}")
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        if lengths.shape != (x.shape[0],) or lengths.dtype != torch.long:
            raise ValueError(
                f"lengths must be int64 of shape ({x.shape[0]},), got {lengths.dtype} {tuple(lengths.shape)}"
            )
        if bool((lengths < cfg.hop).any()) or bool((lengths > x.shape[1]).any()):
            raise ValueError(
                f"audio lengths {lengths.tolist()} must lie in [{cfg.hop}, {x.shape[1]}] samples "
                f"(at least one 20 ms frame, at most the batch's padded length)"
            )
        frames = self.frame_lengths(lengths)
        if int(frames.max()) > cfg.audio_max_length:
            i = int(frames.argmax())
            raise ValueError(
                f"clip {i} ({int(lengths[i]) / cfg.audio_sample_rate:.2f} s) gives {int(frames[i])} frames > audio_max_length="
                f"{cfg.audio_max_length} ({cfg.audio_max_length * FRAME_HOP_MS / 1000:g} s at {FRAME_HOP_MS} ms "
                f"per frame); crop or split the clip, or raise audio_max_length"
            )
        x = x[:, : int(lengths.max())]  # padding past the longest clip is never computed
        num_frames = int(frames.max())
        h = self.front_end(x, lengths)[:, :num_frames]
        valid = torch.arange(num_frames, device=x.device) < frames[:, None]
        h = _zero_padding(h, valid)
        for block in self.blocks:
            h = block(h, valid)
        h = _zero_padding(h, valid)
        return EncoderOutput(h, valid, {"ctc_logits": self.ctc_head(h), "frame_lengths": frames})


def build_audio_encoder(cfg: AudioEncoderConfig) -> AudioEncoder:
    return AudioEncoder(cfg)


# ----------------------------------------------------------------------------------- ASR head
def normalize_transcript(text: str) -> str:
    """Lower case; punctuation other than the apostrophe becomes a space; whitespace collapses.
    Anything else outside ASR_ALPHABET (digits, accented letters) is an error naming it."""
    chars = []
    for ch in text.lower():
        if ch in _CHAR_ID:
            chars.append(ch)
        elif ch.isspace() or unicodedata.category(ch).startswith("P"):
            chars.append(" ")
        else:
            raise ValueError(f"transcript {text!r}: character {ch!r} is not in ASR_ALPHABET (a-z, space, apostrophe)")
    return " ".join("".join(chars).split())


def encode_transcript(text: str) -> list[int]:
    """ASR_ALPHABET ids of the normalised transcript."""
    return [_CHAR_ID[c] for c in normalize_transcript(text)]


def ctc_loss(out: EncoderOutput, transcripts: Sequence[str], lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Mean CTC loss (torch's, blank 0, per item divided by its target length) of
    ``out.extras["ctc_logits"]`` against ``transcripts``. ``lengths``: frames per item (default
    ``out.extras["frame_lengths"]``). A transcript that cannot fit its frames (characters plus a
    blank between repeats) is an error naming the item, not an infinite loss."""
    logits = out.extras["ctc_logits"]
    frames = out.extras["frame_lengths"] if lengths is None else lengths
    if len(transcripts) != logits.shape[0]:
        raise ValueError(f"{len(transcripts)} transcripts for a batch of {logits.shape[0]} clips")
    targets = [encode_transcript(t) for t in transcripts]
    for i, (ids, n) in enumerate(zip(targets, frames.tolist())):
        if not ids:
            raise ValueError(f"clip {i}: transcript {transcripts[i]!r} has no characters after normalisation")
        need = len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))  # a blank between repeats
        if need > n or n > logits.shape[1]:
            raise ValueError(
                f"clip {i}: transcript {transcripts[i]!r} needs {need} CTC frames, the clip has {n}"
                f" (of {logits.shape[1]} logit frames)"
            )
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
    flat = torch.tensor([i for ids in targets for i in ids], dtype=torch.long, device=logits.device)
    target_lengths = torch.tensor([len(ids) for ids in targets], dtype=torch.long, device=logits.device)
    return F.ctc_loss(log_probs, flat, frames, target_lengths, blank=0, reduction="mean")


def greedy_decode(ctc_logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """Best path per item over its first ``lengths`` frames: argmax, merge repeats, drop blanks."""
    best = ctc_logits.argmax(-1).tolist()
    texts = []
    for ids, n in zip(best, lengths.tolist()):
        chars = [ASR_ALPHABET[c] for j, c in enumerate(ids[:n]) if c != 0 and (j == 0 or c != ids[j - 1])]
        texts.append(" ".join("".join(chars).split()))
    return texts


def word_errors(ref: str, hyp: str) -> int:
    """Levenshtein distance between the word sequences (substitutions + deletions + insertions)."""
    r, h = ref.split(), hyp.split()
    row = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, row[0] = row[0], i
        for j, hw in enumerate(h, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
    return row[-1]


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus WER: total word errors / total reference words (may exceed 1 with insertions)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    words = sum(len(r.split()) for r in refs)
    if words == 0:
        raise ValueError("word error rate of references with no words is undefined")
    return sum(word_errors(r, h) for r, h in zip(refs, hyps)) / words


__all__ = [
    "ASR_ALPHABET",
    "AudioEncoder",
    "AudioEncoderConfig",
    "EncoderOutput",
    "build_audio_encoder",
    "ctc_loss",
    "encode_transcript",
    "greedy_decode",
    "normalize_transcript",
    "word_error_rate",
    "word_errors",
]
