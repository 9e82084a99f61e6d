"""Evaluation of the speech generator on held-out transcripts and held-out speakers.

Intelligibility: a recogniser transcribes (a) the generated speech of each held-out transcript,
cloned from a reference clip of the held-out speaker (another clip of that speaker), (b) the real
speech of the same transcripts (the ceiling) and (c) the *shuffled* baseline: the generated
speech of another item's transcript, scored against the intended text (what a generator that
ignores its text would score). Word error rates are corpus-level (edits / reference words).

Voice cloning: per item the cosine similarity of a fixed speaker feature (the long-term average
log-mel spectrum, nothing learned) of the cloned speech to that of its reference clip and to that
of a clip of a different held-out speaker, and the pitch error
(:func:`~xoron_pipelines.synth.media.speech.estimate_pitch`) against each; both are independent
of the generator.

The recogniser is the project's own ASR (issue 14): :mod:`xoron_pipelines.model.audio`'s audio
encoder (log-mel front end, Conformer blocks) and character CTC head, trained here on the *real*
training clips only (:func:`train_recognizer`); it never sees generated speech.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from xoron_pipelines.model.audio import word_error_rate
from xoron_pipelines.validation import Seed, StrictModel

__all__ = ["Recognizer", "RecognizerConfig", "SpeechEvalConfig", "evaluate_speech_model", "train_recognizer",
           "word_error_rate"]  # fmt: skip

log = logging.getLogger(__name__)


class RecognizerConfig(StrictModel):
    """The evaluation's recogniser: issue 14's audio encoder (:mod:`xoron_pipelines.model.audio`,
    log-mel front end, Conformer blocks) with its character CTC head, trained on the real
    training clips."""

    hidden_size: int = Field(96, ge=8, description="audio encoder width (a multiple of 4 x num_heads)")
    num_layers: int = Field(2, ge=1, description="Conformer blocks")
    num_heads: int = Field(4, ge=1)
    n_mels: int = Field(80, ge=8, description="the encoder's audio_n_mels")
    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    seed: Seed = 0

    def encoder_config(self, sample_rate: int = 16000):
        from xoron_pipelines.model.audio import AudioEncoderConfig

        return AudioEncoderConfig(
            use_raw_waveform=False,
            audio_sample_rate=sample_rate,
            audio_n_mels=self.n_mels,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
        )


class Recognizer:
    """Waveforms -> transcripts with a trained :class:`~xoron_pipelines.model.audio.AudioEncoder`:
    CTC logits, greedy best path (``greedy_decode``). Clips shorter than one encoder frame are
    padded with silence to one frame."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder.eval()

    @torch.no_grad()
    def transcribe(self, waves: Sequence[np.ndarray], batch_size: int = 32) -> list[str]:
        from xoron_pipelines.model.audio import greedy_decode

        hop = self.encoder.config.hop
        out: list[str] = []
        for i in range(0, len(waves), batch_size):
            wave, lengths = _pad(waves[i : i + batch_size], hop)
            enc = self.encoder(wave, lengths)
            out += greedy_decode(enc.extras["ctc_logits"], enc.extras["frame_lengths"])
        return out


def _pad(waves: Sequence[np.ndarray], min_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [max(w.size, min_length) for w in waves]
    out = torch.zeros(len(waves), max(lengths))
    for b, w in enumerate(waves):
        out[b, : w.size] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return out, torch.tensor(lengths, dtype=torch.long)


def train_recognizer(
    waves: Sequence[np.ndarray],
    transcripts: Sequence[str],
    cfg: RecognizerConfig,
    progress: bool = False,
    sample_rate: int = 16000,
) -> Recognizer:
    """Issue 14's audio encoder + CTC head (``build_audio_encoder``, ``ctc_loss``) trained on real
    clips (seeded; AdamW, linear warm-up over a tenth of the steps, cosine decay)."""
    from tqdm.auto import tqdm

    from xoron_pipelines.model.audio import build_audio_encoder, ctc_loss

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    encoder = build_audio_encoder(cfg.encoder_config(sample_rate)).train()
    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.learning_rate)
    warmup = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step / cfg.steps, 1.0))))
    )
    hop = encoder.config.hop
    for _ in tqdm(range(cfg.steps), desc="speech asr", disable=not progress, leave=False):
        idx = rng.choice(len(waves), size=min(cfg.batch_size, len(waves)), replace=False)
        wave, lengths = _pad([waves[i] for i in idx], hop)
        loss = ctc_loss(encoder(wave, lengths), [transcripts[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        opt.step()
        sched.step()
    return Recognizer(encoder)


def derangement(n: int, rng: np.random.Generator, keys: Sequence[str] | None = None) -> np.ndarray:
    """A permutation with no fixed point (and, given ``keys``, none mapping an item to one with the
    same key where avoidable): the shuffled-transcript baseline never scores a text against itself."""
    if n < 2:
        raise ValueError("the shuffled baseline needs at least 2 items")
    best = None
    for _ in range(100):
        perm = rng.permutation(n)
        if (perm == np.arange(n)).any():
            continue
        clashes = 0 if keys is None else sum(keys[i] == keys[p] for i, p in enumerate(perm))
        if best is None or clashes < best[0]:
            best = (clashes, perm)
        if clashes == 0:
            break
    if best is None:
        return np.roll(np.arange(n), 1)
    return best[1]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1)


def speaker_similarity(
    model,
    generated: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    others: Sequence[np.ndarray],
    sample_rate: int,
) -> dict[str, float]:
    """Cosine of a fixed speaker feature and pitch error of each generated clip to its reference
    and to a different speaker's clip: means, and the share of items closer to their own reference.
    The feature is nothing learned (a trained speaker encoder can collapse, or share the
    generator's blind spots): the long-term average log-mel spectrum of the clip's speech frames
    (within 60 dB of its loudest), centred over the bands (loudness cancels); it carries the
    timbre (formants) and the pitch's harmonics."""
    from xoron_pipelines.synth.media.speech import estimate_pitch
    from xoron_pipelines.training.tts import pad_waves

    hop = model.config.hop_length

    @torch.no_grad()
    def embed(waves):
        out = []
        for w in waves:
            wave, lengths = pad_waves([w], hop)
            mel = model.log_mel(wave)[0]  # (n_mels, T): a fixed filterbank
            energy = torch.logsumexp(mel, 0)
            speech = mel[:, energy > energy.max() - math.log(1000.0)]
            ltas = speech.mean(-1)
            out.append(ltas - ltas.mean())
        return torch.stack(out)

    g, r, o = embed(generated), embed(references), embed(others)
    cos_ref, cos_other = cosine(g, r), cosine(g, o)
    f0 = lambda waves: np.array([estimate_pitch(w, sample_rate) for w in waves])  # noqa: E731
    fg, fr, fo = f0(generated), f0(references), f0(others)
    voiced = (fg > 0) & (fr > 0) & (fo > 0)
    err_ref, err_other = np.abs(fg - fr)[voiced], np.abs(fg - fo)[voiced]
    return {
        "cosine_to_reference": float(cos_ref.mean()),
        "cosine_to_other_speaker": float(cos_other.mean()),
        "closer_to_reference_share": float((cos_ref > cos_other).float().mean()),
        "pitch_error_hz_to_reference": float(err_ref.mean()) if voiced.any() else math.nan,
        "pitch_error_hz_to_other_speaker": float(err_other.mean()) if voiced.any() else math.nan,
        "pitch_closer_to_reference_share": float((err_ref < err_other).mean()) if voiced.any() else math.nan,
        "pitch_voiced_items": int(voiced.sum()),
    }


class SpeechEvalConfig(StrictModel):
    """``speech_generation.evaluate``."""

    max_items: int = Field(60, ge=2, description="held-out clips scored (a seeded sample when there are more)")
    samples_logged: int = Field(4, ge=0, description="generated / reference WAV pairs logged to MLflow")
    seed: Seed = 0
    recognizer: RecognizerConfig = RecognizerConfig()


def evaluate_speech_model(
    model, train_clips: Sequence[tuple[str, np.ndarray, str, str]], heldout: Sequence, cfg: SpeechEvalConfig
) -> tuple[dict, dict[str, np.ndarray]]:
    """The report (see the module docstring) and WAV samples ``{name: waveform}``.

    ``train_clips``: (id, wave, transcript, speaker) of the real training clips (the recogniser's
    data); ``heldout``: :class:`~xoron_pipelines.training.tts.Item` of the held-out clips. Each
    held-out clip is regenerated from its transcript in the voice of another clip of its speaker
    (the reference); the "other speaker" clip comes from a different held-out speaker."""
    from xoron_pipelines.training.tts import synthesize

    rng = np.random.default_rng(cfg.seed)
    if len(heldout) > cfg.max_items:
        heldout = [heldout[i] for i in sorted(rng.choice(len(heldout), cfg.max_items, replace=False))]
    speakers = sorted({it.speaker for it in heldout})
    if len(speakers) < 2:
        raise ValueError(f"speaker similarity needs held-out clips of at least 2 speakers, got {speakers}")
    by_speaker: dict[str, list[int]] = {}
    for i, it in enumerate(heldout):
        by_speaker.setdefault(it.speaker, []).append(i)
    refs, others, self_refs = [], [], 0
    for i, it in enumerate(heldout):
        pool = [j for j in by_speaker[it.speaker] if j != i]
        self_refs += not pool
        refs.append(heldout[int(rng.choice(pool or [i]))].wave)
        other = [j for j, o in enumerate(heldout) if o.speaker != it.speaker]
        others.append(heldout[int(rng.choice(other))].wave)
    texts = [it.transcript for it in heldout]
    sr = model.config.sample_rate
    generated = synthesize(model, [(it.llm_hidden, it.token_embeds) for it in heldout], references=refs)

    asr = train_recognizer([c[1] for c in train_clips], [c[2] for c in train_clips], cfg.recognizer, sample_rate=sr)
    known = {w for c in train_clips for w in c[2].split()}
    hyp_real = asr.transcribe([it.wave for it in heldout])
    hyp_gen = asr.transcribe(generated)
    perm = derangement(len(heldout), rng, texts)
    seen_train = {c[3] for c in train_clips}
    report = {
        "n": len(heldout),
        "heldout_speakers": len(speakers),
        "heldout_speakers_seen_in_training": len(set(speakers) & seen_train),
        "references_from_the_same_clip": self_refs,
        "words_not_in_training_transcripts": sorted({w for t in texts for w in t.split()} - known),
        "recognizer": "model/audio.py's audio encoder (log-mel) + character CTC head, trained on the real training clips",
        "wer": {
            "generated": word_error_rate(texts, hyp_gen),
            "real_ceiling": word_error_rate(texts, hyp_real),
            "shuffled_baseline": word_error_rate(texts, [hyp_gen[p] for p in perm]),
        },
        "speaker": speaker_similarity(model, generated, refs, others, sr),
        "examples": [{"text": t, "real": r, "generated": g} for t, r, g in list(zip(texts, hyp_real, hyp_gen))[:10]],
    }
    report["wer"]["below_baseline"] = report["wer"]["generated"] < report["wer"]["shuffled_baseline"]
    samples = {}
    for k in range(min(cfg.samples_logged, len(heldout))):
        samples[f"{k:02d}_generated"] = generated[k]
        samples[f"{k:02d}_reference"] = refs[k]
        samples[f"{k:02d}_real"] = heldout[k].wave
    log.info(
        "speech evaluation on %d held-out clips: WER generated %.3f, real %.3f, shuffled %.3f; speaker cosine "
        "to reference %.3f vs other %.3f",
        len(heldout), report["wer"]["generated"], report["wer"]["real_ceiling"], report["wer"]["shuffled_baseline"],
        report["speaker"]["cosine_to_reference"], report["speaker"]["cosine_to_other_speaker"],
    )  # fmt: skip
    return report, samples
