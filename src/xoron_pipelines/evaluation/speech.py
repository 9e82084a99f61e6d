"""Evaluation of the speech generator on held-out transcripts and held-out speakers.

Intelligibility: a recogniser transcribes (a) the generated speech of each held-out transcript,
cloned from a reference clip of the held-out speaker (another clip of that speaker), (b) the real
speech of the same transcripts (the ceiling) and (c) the *shuffled* baseline: the generated
speech of another item's transcript, scored against the intended text (what a generator that
ignores its text would score). Word error rates are corpus-level (edits / reference words).

Voice cloning: per item the cosine similarity of the speaker encoder's embedding of the cloned
speech to that of its reference clip and to that of a clip of a different held-out speaker, and
the pitch error (:func:`~xoron_pipelines.synth.media.speech.estimate_pitch`) against each. The
pitch is an independent measurement (not a learned embedding).

The recogniser: the audio encoder + CTC head of the multimodal branch was not available when this
was written, so :class:`CTCRecognizer` (log-mel -> convolutions -> bidirectional GRU -> CTC over
the words of the training transcripts) is trained here on the *real* training clips only; it
never sees generated speech.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xoron_pipelines.model.speech import LogMel
from xoron_pipelines.validation import Seed, StrictModel

log = logging.getLogger(__name__)


class RecognizerConfig(StrictModel):
    """The evaluation's own CTC recogniser (trained on real training clips)."""

    hidden_size: int = Field(96, ge=8)
    n_mels: int = Field(40, ge=8)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    seed: Seed = 0


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate: total word edit distance / total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    edits = words = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        row = list(range(len(h) + 1))
        for i, rw in enumerate(r, 1):
            prev, row[0] = row[0], i
            for j, hw in enumerate(h, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
        edits += row[-1]
        words += len(r)
    if words == 0:
        raise ValueError("the references have no words")
    return edits / words


class CTCRecognizer(nn.Module):
    """Waveform -> words: 10 ms log-mel frames (normalised per clip), two stride-2 convolutions,
    dilated residual convolutions and a CTC head over ``words`` (+ blank, index 0); greedy
    decoding. Convolutions only: it trains in seconds on a CPU."""

    def __init__(self, words: Sequence[str], cfg: RecognizerConfig, sample_rate: int = 16000) -> None:
        super().__init__()
        self.words = list(words)
        self.log_mel = LogMel(sample_rate, 400, 160, cfg.n_mels)
        d = cfg.hidden_size
        self.convs = nn.Sequential(
            nn.Conv1d(cfg.n_mels, d, 5, stride=2, padding=2), nn.GELU(), nn.Conv1d(d, d, 5, stride=2, padding=2), nn.GELU()
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(d, d, 5, dilation=k, padding=2 * k), nn.GELU(), nn.Conv1d(d, d, 1))
            for k in (1, 2, 4)
        )
        self.head = nn.Conv1d(d, len(self.words) + 1, 1)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities (B, T, V + 1) and output lengths (B,)."""
        mel = self.log_mel(wave)
        mel = (mel - mel.mean(dim=(1, 2), keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True) + 1e-5)
        h = self.convs(mel)
        for block in self.blocks:
            h = h + block(h)
        out_len = torch.clamp(((lengths // 160) + 3) // 4, min=1, max=h.shape[-1])
        return F.log_softmax(self.head(h).transpose(1, 2), -1), out_len

    @torch.no_grad()
    def transcribe(self, waves: Sequence[np.ndarray], batch_size: int = 32) -> list[str]:
        self.eval()
        out = []
        for i in range(0, len(waves), batch_size):
            wave, lengths = _pad(waves[i : i + batch_size])
            logp, out_len = self(wave, lengths)
            for b in range(logp.shape[0]):
                ids = logp[b, : out_len[b]].argmax(-1).tolist()
                words, prev = [], 0
                for k in ids:
                    if k != prev and k != 0:
                        words.append(self.words[k - 1])
                    prev = k
                out.append(" ".join(words))
        return out


def _pad(waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(max(w.size for w in waves), 400)
    out = torch.zeros(len(waves), n)
    for b, w in enumerate(waves):
        out[b, : w.size] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return out, torch.tensor([w.size for w in waves], dtype=torch.long)


def train_recognizer(
    waves: Sequence[np.ndarray], transcripts: Sequence[str], cfg: RecognizerConfig, progress: bool = False
) -> CTCRecognizer:
    """A :class:`CTCRecognizer` trained on real clips (seeded)."""
    from tqdm.auto import tqdm

    words = sorted({w for t in transcripts for w in t.split()})
    index = {w: i + 1 for i, w in enumerate(words)}
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = CTCRecognizer(words, cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.learning_rate, total_steps=cfg.steps, pct_start=0.1)
    for _ in tqdm(range(cfg.steps), desc="speech asr", disable=not progress, leave=False):
        idx = rng.choice(len(waves), size=min(cfg.batch_size, len(waves)), replace=False)
        wave, lengths = _pad([waves[i] for i in idx])
        targets = [torch.tensor([index[w] for w in transcripts[i].split()]) for i in idx]
        logp, out_len = model(wave, lengths)
        loss = F.ctc_loss(
            logp.transpose(0, 1),
            torch.cat(targets),
            out_len,
            torch.tensor([t.numel() for t in targets]),
            zero_infinity=True,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


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
    model, generated: Sequence[np.ndarray], references: Sequence[np.ndarray], others: Sequence[np.ndarray], sample_rate: int
) -> dict[str, float]:
    """Cosine of speaker embeddings and pitch error of each generated clip to its reference and
    to a different speaker's clip: means, and the share of items closer to their own reference."""
    from xoron_pipelines.synth.media.speech import estimate_pitch
    from xoron_pipelines.training.tts import pad_waves

    hop = model.config.hop_length

    @torch.no_grad()
    def embed(waves):
        wave, lengths = pad_waves(waves, hop)
        mel, mask = model.mel_and_mask(wave, lengths)
        return model.speaker_encoder(mel, mask)

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

    asr = train_recognizer([c[1] for c in train_clips], [c[2] for c in train_clips], cfg.recognizer)
    known = set(asr.words)
    hyp_real = asr.transcribe([it.wave for it in heldout])
    hyp_gen = asr.transcribe(generated)
    perm = derangement(len(heldout), rng, texts)
    seen_train = {c[3] for c in train_clips}
    report = {
        "n": len(heldout),
        "heldout_speakers": len(speakers),
        "heldout_speakers_seen_in_training": len(set(speakers) & seen_train),
        "references_from_the_same_clip": self_refs,
        "words_unknown_to_recognizer": sorted({w for t in texts for w in t.split()} - known),
        "recognizer": "evaluation's own CTC recogniser, trained on the real training clips",
        "wer": {
            "generated": word_error_rate(texts, hyp_gen),
            "real_ceiling": word_error_rate(texts, hyp_real),
            "shuffled_baseline": word_error_rate(texts, [hyp_gen[p] for p in perm]),
        },
        "speaker": speaker_similarity(model, generated, refs, others, sr),
        "examples": [
            {"text": t, "real": r, "generated": g} for t, r, g in list(zip(texts, hyp_real, hyp_gen))[:10]
        ],
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
