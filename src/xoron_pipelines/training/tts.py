"""Training of the speech generator (:mod:`xoron_pipelines.model.speech`): data, batches, loss, loop.

Data: rows of a media audio table (``MEDIA_COLUMNS``: WAV bytes, ``caption`` = transcript,
``speaker``). :func:`prepare_items` decodes each clip and computes once, with the frozen LLM, the
last hidden states and input embeddings of its transcript's tokens (the LLM never trains here).

A step (:func:`tts_losses`): the speaker vector comes from the speaker table for a share
``table_prob`` of the batch and from the speaker encoder on a *different* clip of the same speaker
for the rest (the reference; also the in-context prompt), so both routes condition the same
decoder and cloning works for speakers the table never saw. The text encoder's Gaussian means
are aligned to the log-mel frames by MAS (or uniform durations); the losses are

- ``prior``: the Gaussian negative log-likelihood of the frames under their aligned means
  (per mel band, constant dropped; Glow-TTS);
- ``duration``: squared error of the predicted log-durations against the alignment's;
- ``stft``: multi-resolution STFT loss (spectral convergence + log-magnitude L1) of the decoded
  waveform of a random ``segment_frames`` window against the real one (VITS decodes windows);
- ``mel``: L1 between the log-mels of that window, generated and real (BigVGAN);
- ``frame_mel``: L1 of the log-mel the frame network predicts (every frame; the decoder renders
  it, FastSpeech 2s-style: the spectral envelope is learned long before the waveform is);
- ``pitch``: squared error of the predicted log-f0 on the real clip's voiced frames plus the
  voicing cross-entropy (targets :func:`~xoron_pipelines.model.speech.frame_pitch`); the decoded
  window's excitation is at the real f0 (teacher forcing), generation uses the predicted one;
- ``source``: the multi-resolution STFT loss of the learned harmonic-plus-noise source alone
  against the real window (DDSP; ``source: harmonic_noise`` only, ``source_weight``);
- ``speaker``: squared distance of the encoder's embedding to the speaker's table row (ties the
  two routes; the row is not pulled towards the encoder).

The stage loss is ``tts_loss_weight`` (seed 000: 0.1) x the weighted sum, through
:meth:`LossWeights.combine`. No GAN discriminators: adversarial training (BigVGAN's multi-period /
multi-resolution discriminators) pays off after many thousands of steps and would double the cost
of each; the CPU default run has 360 steps, where the spectral losses are what moves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from xoron_pipelines.model.speech import SpeechModel, expand, frame_pitch
from xoron_pipelines.training.losses import LossWeights
from xoron_pipelines.validation import Seed, StrictModel

log = logging.getLogger(__name__)


class TTSTrainConfig(StrictModel):
    """The speech stage's training knobs (CPU-sized defaults)."""

    steps: int = Field(360, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(20, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    segment_frames: int = Field(16, ge=1, description="frames per decoded training window (x hop_length samples)")
    table_prob: float = Field(0.5, ge=0, le=1, description="share of items conditioned on the speaker table")
    tts_loss_weight: float = Field(0.1, ge=0, description="seed 000: scales the stage loss")
    prior_weight: float = Field(1.0, ge=0)
    duration_weight: float = Field(1.0, ge=0)
    stft_weight: float = Field(1.0, ge=0)
    mel_weight: float = Field(1.0, ge=0)
    frame_mel_weight: float = Field(3.0, ge=0, description="L1 of the frame network's log-mel (all frames)")
    speaker_weight: float = Field(0.1, ge=0)
    pitch_weight: float = Field(1.0, ge=0, description="log-f0 MSE (voiced frames) + voicing BCE")
    source_weight: float = Field(
        1.0, ge=0, description="multi-resolution STFT loss of the learned harmonic-plus-noise source alone"
    )
    seed: Seed = 0
    log_every: int = Field(10, ge=1)
    progress: bool = True


@dataclass
class Item:
    """One training / evaluation clip, decoded, with its transcript's LLM features."""

    id: str
    wave: np.ndarray  # float32 (N,)
    transcript: str
    speaker: str
    llm_hidden: torch.Tensor  # (L, H)
    token_embeds: torch.Tensor  # (L, H)
    f0: np.ndarray | None = None  # per-frame f0 in Hz (0 = unvoiced), :func:`frame_pitch`, set lazily


def item_pitch(item: Item, sample_rate: int, hop: int) -> np.ndarray:
    """The item's per-frame f0 (computed once, cached on the item)."""
    if item.f0 is None or item.f0.size != item.wave.size // hop:
        item.f0 = frame_pitch(item.wave, sample_rate, hop)[0]
    return item.f0


@torch.no_grad()
def text_features(
    llm, tokenizer, texts: Sequence[str], batch_size: int = 64
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per distinct text the frozen LLM's last hidden states and input embeddings of its tokens
    (no special tokens), each (L, H) float32 on the CPU; texts run in right-padded batches (a
    causal model's states at the real tokens do not see the padding). An empty tokenisation is
    an error."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    device = next(llm.parameters()).device
    was_training = llm.training
    llm.eval()
    distinct = list(dict.fromkeys(texts))
    for start in range(0, len(distinct), batch_size):
        chunk = distinct[start : start + batch_size]
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in chunk]
        for text, row in zip(chunk, ids):
            if not row:
                raise ValueError(f"transcript {text!r} has no tokens")
        length = max(len(row) for row in ids)
        ids_t = torch.zeros(len(ids), length, dtype=torch.long)
        mask = torch.zeros(len(ids), length, dtype=torch.long)
        for b, row in enumerate(ids):
            ids_t[b, : len(row)], mask[b, : len(row)] = torch.tensor(row), 1
        ids_t, mask = ids_t.to(device), mask.to(device)
        hidden = llm.model(ids_t, attention_mask=mask).last_hidden_state.float().cpu()
        embeds = llm.get_input_embeddings()(ids_t).float().cpu()
        for b, (text, row) in enumerate(zip(chunk, ids)):
            out[text] = (hidden[b, : len(row)].clone(), embeds[b, : len(row)].clone())
    llm.train(was_training)
    return out


def decode_rows(rows, sample_rate: int) -> list[tuple[str, np.ndarray, str, str]]:
    """(id, wave, transcript, speaker) per row of a media audio table (a DataFrame or records);
    a row that is not usable audio raises naming its id and the reason."""
    from xoron_pipelines.data.media import MediaError, decode_audio, resample

    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    out = []
    for row in records:
        rid = row.get("id", "?")
        if row.get("modality") != "audio":
            raise ValueError(f"media_audio row {rid!r}: modality {row.get('modality')!r}, expected 'audio'")
        transcript = str(row.get("caption") or "").strip()
        if not transcript:
            raise ValueError(f"media_audio row {rid!r}: empty transcript (caption)")
        try:
            wave, sr = decode_audio(row["media"])
        except MediaError as err:
            raise ValueError(f"media_audio row {rid!r}: {err}") from err
        out.append((str(rid), resample(wave, sr, sample_rate), transcript, str(row.get("speaker") or "")))
    return out


def prepare_items(rows, llm, tokenizer, sample_rate: int) -> list[Item]:
    """Decoded clips with the LLM features of their transcripts (computed once per transcript)."""
    decoded = decode_rows(rows, sample_rate)
    feats = text_features(llm, tokenizer, [d[2] for d in decoded])
    return [Item(rid, wave, text, spk, *feats[text]) for rid, wave, text, spk in decoded]


def pad_waves(waves: Sequence[np.ndarray], hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) zero-padded to a multiple of ``hop`` and the lengths (B,) cut to whole frames."""
    lengths = [w.size // hop * hop for w in waves]
    n = max(max(lengths), hop)
    out = torch.zeros(len(waves), n)
    for b, w in enumerate(waves):
        out[b, : lengths[b]] = torch.from_numpy(w[: lengths[b]])
    return out, torch.tensor(lengths, dtype=torch.long)


def pad_text(items: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLM hidden states and embeddings (B, L, H) right-padded with zeros, and the token mask (B, L)."""
    length = max(i.llm_hidden.shape[0] for i in items)
    dim = items[0].llm_hidden.shape[1]
    hidden = torch.zeros(len(items), length, dim)
    embeds = torch.zeros(len(items), length, dim)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for b, it in enumerate(items):
        n = it.llm_hidden.shape[0]
        hidden[b, :n], embeds[b, :n], mask[b, :n] = it.llm_hidden, it.token_embeds, True
    return hidden, embeds, mask


def make_batch(
    items: Sequence[Item],
    indices: Sequence[int],
    speaker_index: dict[str, int],
    by_speaker: dict[str, list[int]],
    rng: np.random.Generator,
    hop: int,
    sample_rate: int = 16000,
) -> dict[str, torch.Tensor]:
    """Tensors of a training batch: waveforms, per-frame f0 (Hz, 0 = unvoiced), LLM features,
    table ids and a reference clip per item (another clip of its speaker when there is one)."""
    chosen = [items[i] for i in indices]
    refs = []
    for i in indices:
        pool = [j for j in by_speaker[items[i].speaker] if j != i] or [i]
        refs.append(int(rng.choice(pool)))
    wave, lengths = pad_waves([it.wave for it in chosen], hop)
    ref_wave, ref_lengths = pad_waves([items[j].wave for j in refs], hop)
    hidden, embeds, mask = pad_text(chosen)

    def tracks(clips: Sequence[Item], frames: int) -> torch.Tensor:
        out = torch.zeros(len(clips), frames)
        for b, it in enumerate(clips):
            track = item_pitch(it, sample_rate, hop)
            out[b, : track.size] = torch.from_numpy(track)
        return out

    f0 = tracks(chosen, wave.shape[1] // hop)
    ref_f0 = tracks([items[j] for j in refs], ref_wave.shape[1] // hop)
    return {
        "wave": wave,
        "lengths": lengths,
        "f0": f0,
        "ref_wave": ref_wave,
        "ref_lengths": ref_lengths,
        "ref_f0": ref_f0,
        "llm_hidden": hidden,
        "token_embeds": embeds,
        "token_mask": mask,
        "speaker_ids": torch.tensor([speaker_index[it.speaker] for it in chosen], dtype=torch.long),
    }


STFT_RESOLUTIONS = ((512, 128), (1024, 256), (256, 64))


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over resolutions of spectral convergence + L1 of log magnitudes (Parallel WaveGAN);
    resolutions longer than the clips are left out."""
    resolutions = [(n, h) for n, h in STFT_RESOLUTIONS if n <= pred.shape[-1]]
    if not resolutions:
        raise ValueError(f"clips of {pred.shape[-1]} samples are shorter than the smallest STFT window (256)")
    total = pred.new_zeros(())
    for n_fft, hop in resolutions:
        window = torch.hann_window(n_fft, device=pred.device)
        p = torch.stft(pred, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-7)
        t = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-7)
        sc = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=1e-7)
        total = total + sc + F.l1_loss(p.log(), t.log())
    return total / len(resolutions)


def tts_losses(
    model: SpeechModel, batch: dict[str, torch.Tensor], cfg: TTSTrainConfig, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """The weighted stage loss (``loss``) and its unweighted terms for one batch."""
    mcfg = model.config
    hop = mcfg.hop_length
    mel, frame_mask = model.mel_and_mask(batch["wave"], batch["lengths"])
    ref_mel, ref_mask = model.mel_and_mask(batch["ref_wave"], batch["ref_lengths"])
    bsz = mel.shape[0]
    use_table = torch.from_numpy(rng.random(bsz) < cfg.table_prob).to(mel.device)
    speaker = model.speaker_vector(batch["speaker_ids"], ref_mel, ref_mask, use_table, batch["ref_f0"])
    slots, slot_mask, means, log_dur = model.encode_text(
        batch["llm_hidden"], batch["token_embeds"], batch["token_mask"], speaker
    )
    durations = model.align(means.detach(), slot_mask, mel, frame_mask)
    num_frames = mel.shape[-1]
    # prior: frames under the Gaussian of their slot
    aligned = expand(means, durations, num_frames)
    sq = ((mel.transpose(1, 2) - aligned) ** 2).mean(-1)
    prior = 0.5 * (sq * frame_mask).sum() / frame_mask.sum()
    target_log_dur = torch.log(durations.float().clamp(min=1))
    duration = (((log_dur - target_log_dur) ** 2) * slot_mask).sum() / slot_mask.sum()
    # decoder on a random window of frames
    h = model.frames(slots, durations, num_frames, frame_mask, ref_mel, ref_mask)
    frame_err = (h[:, -mel.shape[1] :] - mel).abs().mean(1)
    frame_mel = (frame_err * frame_mask).sum() / frame_mask.sum()
    seg = min(cfg.segment_frames, num_frames)
    starts = [int(rng.integers(0, max(int(frame_mask[b].sum()) - seg, 0) + 1)) for b in range(bsz)]
    # pitch: log-f0 on the voiced frames, voicing everywhere; the decoder's source is the real
    # clip's f0 (teacher forcing, as NSF-HiFiGAN trains)
    f0, voiced = batch["f0"], batch["f0"] > 0
    log_f0, voicing = model.pitch(h, speaker)
    on = voiced & frame_mask
    pitch = ((log_f0 - f0.clamp(min=1).log()) ** 2 * on).sum() / on.sum().clamp(min=1)
    voicing_loss = (F.binary_cross_entropy_with_logits(voicing, voiced.float(), reduction="none") * frame_mask).sum()
    pitch = pitch + voicing_loss / frame_mask.sum()
    h_seg = torch.stack([h[b, :, s : s + seg] for b, s in enumerate(starts)])
    f0_seg = torch.stack([f0[b, s : s + seg] for b, s in enumerate(starts)])
    real = torch.stack([batch["wave"][b, s * hop : (s + seg) * hop] for b, s in enumerate(starts)])
    source = model.excite(h_seg, f0_seg, f0_seg > 0)
    fake = model.decoder(h_seg, speaker, source)
    stft = multi_resolution_stft_loss(fake, real)
    # the learned source alone against the real window (DDSP's spectral loss): its envelope
    # learns the formants directly, whatever the decoder does on top
    source_loss = multi_resolution_stft_loss(source, real) if model.source is not None else stft.new_zeros(())
    mel_l1 = F.l1_loss(model.log_mel(fake), model.log_mel(real))
    # the encoder learns to land on its speaker's row; the rows learn only through the decoder
    # (pulling them towards the encoder too lets both collapse onto one point)
    target = model.speaker_table(batch["speaker_ids"]).detach()
    speaker_loss = ((model.speaker_encoder(ref_mel, ref_mask, batch["ref_f0"]) - target) ** 2).mean()
    total = (
        cfg.prior_weight * prior
        + cfg.duration_weight * duration
        + cfg.stft_weight * stft
        + cfg.mel_weight * mel_l1
        + cfg.frame_mel_weight * frame_mel
        + cfg.speaker_weight * speaker_loss
        + cfg.pitch_weight * pitch
        + cfg.source_weight * source_loss
    )
    loss = LossWeights(tts_loss_weight=cfg.tts_loss_weight).combine({"tts": total})
    return {
        "loss": loss,
        "tts": total,
        "prior": prior,
        "duration": duration,
        "stft": stft,
        "mel": mel_l1,
        "frame_mel": frame_mel,
        "speaker": speaker_loss,
        "pitch": pitch,
        "source": source_loss,
    }


def speaker_table(items: Sequence[Item]) -> list[str]:
    """The training speakers in table order (sorted ids; :class:`SpeechConfig` refuses more than
    ``audio_num_speakers``)."""
    return sorted({it.speaker for it in items})


def train_tts(
    model: SpeechModel,
    items: Sequence[Item],
    cfg: TTSTrainConfig,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    device: torch.device | str = "cpu",
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``items`` (seeded: the same seed and data give the same
    weights). The model's speaker table follows ``model.config.speakers``. Returns the logged
    history (every ``log_every`` steps and the last)."""
    from tqdm.auto import tqdm

    from xoron_pipelines.training.reproducibility import seed_everything

    if not items:
        raise ValueError("no training clips")
    speaker_index = {s: i for i, s in enumerate(model.config.speakers)}
    missing = sorted({it.speaker for it in items} - set(speaker_index))
    if missing:
        raise ValueError(f"speakers {missing[:5]} are not in the model's speaker table")
    by_speaker: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_speaker.setdefault(it.speaker, []).append(i)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history: list[dict[str, float]] = []
    order = rng.permutation(len(items))
    pos = 0
    bar = tqdm(range(cfg.steps), desc="speech", disable=not cfg.progress, leave=False)
    for step in bar:
        if pos + cfg.batch_size > len(order):
            order, pos = rng.permutation(len(items)), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        batch = {
            k: v.to(device)
            for k, v in make_batch(
                items, idx, speaker_index, by_speaker, rng, model.config.hop_length, model.config.sample_rate
            ).items()
        }
        losses = tts_losses(model, batch, cfg, rng)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {k: float(v.detach()) for k, v in losses.items()}
            row |= {"step": step + 1, "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm)}
            history.append(row)
            bar.set_postfix(loss=f"{row['tts']:.3f}")
            if on_log is not None:
                on_log(step + 1, row)
    model.eval()
    return history


@torch.no_grad()
def synthesize(
    model: SpeechModel,
    texts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    references: Sequence[np.ndarray] | None = None,
    speaker_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    length_scale: float = 1.0,
) -> list[np.ndarray]:
    """Waveforms (float32, trimmed to their predicted length) for ``texts`` (the LLM features of
    each transcript, :func:`text_features`), cloned from ``references`` (one clip per text) or in
    the voices of the table's ``speaker_ids``."""
    if (references is None) == (speaker_ids is None):
        raise ValueError("give either reference clips or speaker ids")
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for i in range(0, len(texts), batch_size):
        chunk = [Item("", np.zeros(1, np.float32), "", "", h, e) for h, e in texts[i : i + batch_size]]
        hidden, embeds, mask = pad_text(chunk)
        kwargs = {}
        if references is not None:
            ref, ref_len = pad_waves(references[i : i + batch_size], model.config.hop_length)
            kwargs = {"ref_wave": ref.to(device), "ref_lengths": ref_len.to(device)}
        else:
            kwargs = {"speaker_ids": torch.tensor(list(speaker_ids[i : i + batch_size]), device=device)}
        wave, lengths = model.generate(
            hidden.to(device), embeds.to(device), mask.to(device), length_scale=length_scale, **kwargs
        )
        out += [wave[b, : lengths[b]].float().cpu().numpy() for b in range(wave.shape[0])]
    return out
