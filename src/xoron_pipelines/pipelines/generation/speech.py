"""Speech generation nodes (issue 15, "Speech"): train the text-to-waveform generator on the
``media_audio`` table, conditioned on the frozen text LLM; evaluate it on held-out transcripts and
held-out speakers; generate WAVs for prompts.

Parameters: the top-level group ``speech_generation`` (``conf/base/parameters_speech_generation.yml``),
validated by :class:`SpeechParams`. The generation pipeline wires these nodes under the ``speech``
namespace.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from xoron_pipelines import tracking
from xoron_pipelines.data.media import encode_audio
from xoron_pipelines.device import DeviceSpec, resolve_device
from xoron_pipelines.evaluation.speech import RecognizerConfig, SpeechEvalConfig, evaluate_speech_model
from xoron_pipelines.model.speech import SpeechArchitecture, SpeechConfig, SpeechModel
from xoron_pipelines.training import tts
from xoron_pipelines.validation import StrictModel

log = logging.getLogger(__name__)


class SpeechTracking(StrictModel):
    enabled: bool = Field(True, description="open a nested MLflow run for the stage and log into it")
    sample_every: int = Field(100, ge=1, description="log a WAV sample every this many steps (and at the end)")
    samples: int = Field(2, ge=0, description="WAV clips per sample round")


class SpeechGenerate(StrictModel):
    speaker: str | None = Field(None, description="table speaker of prompts without one; null = the first")
    length_scale: float = Field(1.0, gt=0, description="multiplies the predicted durations (slower > 1)")


class SpeechParams(StrictModel):
    """The ``speech_generation`` group."""

    device: DeviceSpec = "auto"
    model: SpeechArchitecture = SpeechArchitecture()
    train: tts.TTSTrainConfig = tts.TTSTrainConfig()
    evaluate: SpeechEvalConfig = SpeechEvalConfig()
    generate: SpeechGenerate = SpeechGenerate()
    prompts: list[str | dict[str, str]] = Field([], description="generate_speech's prompts (text or {text, speaker | reference})")
    tracking: SpeechTracking = SpeechTracking()


def _params(params: Any) -> SpeechParams:
    return params if isinstance(params, SpeechParams) else SpeechParams.model_validate(params)


def _split(media_audio, split: Literal["train", "heldout"]):
    rows = media_audio[media_audio["split"] == split]
    if rows.empty:
        raise ValueError(f"media_audio has no {split!r} rows (run the synth and data_processing pipelines)")
    return rows


def train_speech(llm_model, tokenizer, media_audio, params) -> tuple[SpeechModel, dict]:
    """Train the speech generator on the ``train`` rows of ``media_audio`` (its own MLflow run
    ``speech``, WAV samples logged as it trains) -> (model on the CPU, summary)."""
    p = _params(params)
    rows = _split(media_audio, "train")
    device = resolve_device(p.device, "speech_generation.device")
    llm_model = llm_model.to(device)
    items = tts.prepare_items(rows, llm_model, tokenizer, p.model.sample_rate)
    cfg = SpeechConfig(
        **p.model.model_dump(), llm_hidden_size=llm_model.config.hidden_size, speakers=tts.speaker_table(items)
    )
    import torch

    torch.manual_seed(p.train.seed)
    model = SpeechModel(cfg)
    sample_texts = [(it.llm_hidden, it.token_embeds) for it in items[: p.tracking.samples]]
    sample_ids = [cfg.speakers.index(it.speaker) for it in items[: p.tracking.samples]]
    start = time.perf_counter()
    with tracking.stage_run("speech", enabled=p.tracking.enabled) as run:
        recorder = tracking.StageRecorder(run is not None)
        if run is not None:
            tracking.log_params({"speech": p.model_dump()})

        def on_log(step: int, row: dict[str, float]) -> None:
            recorder.log(step, {k: v for k, v in row.items() if k != "step"})
            if run is not None and sample_texts and (step % p.tracking.sample_every == 0 or step == p.train.steps):
                waves = tts.synthesize(model, sample_texts, speaker_ids=sample_ids)
                model.train()
                for k, wave in enumerate(waves):
                    tracking.log_bytes(encode_audio(wave, cfg.sample_rate), f"samples/step{step:05d}_{k}.wav")

        history = tts.train_tts(model, items, p.train, on_log=on_log, device=device)
    model = model.cpu().eval()
    summary = {
        "clips": len(items),
        "speakers": len(cfg.speakers),
        "steps": p.train.steps,
        "seconds": round(time.perf_counter() - start, 1),
        "final": {k: v for k, v in history[-1].items() if k != "step"},
        "config": cfg.model_dump(),
    }
    log.info("speech: trained %d steps on %d clips of %d speakers in %.0f s (loss %.3f)", p.train.steps,
             len(items), len(cfg.speakers), summary["seconds"], history[-1]["tts"])  # fmt: skip
    return model, summary


def evaluate_speech(speech_model, llm_model, tokenizer, media_audio, params) -> dict:
    """Held-out intelligibility (WER of generated / real / shuffled) and voice-cloning similarity
    (see :mod:`xoron_pipelines.evaluation.speech`); WAV samples logged to MLflow."""
    p = _params(params)
    train_rows, held_rows = _split(media_audio, "train"), _split(media_audio, "heldout")
    sr = speech_model.config.sample_rate
    train_items = tts.decode_rows(train_rows, sr)
    held = tts.prepare_items(held_rows, llm_model.cpu(), tokenizer, sr)
    report, samples = evaluate_speech_model(speech_model.cpu().eval(), train_items, held, p.evaluate)
    with tracking.stage_run("speech_evaluation", enabled=p.tracking.enabled) as run:
        if run is not None:
            tracking.StageRecorder(True).log(0, {f"eval/speech/{k}": v for k, v in _numbers(report).items()})
            tracking.log_dict(report, "speech_evaluation.json")
            for name, wave in samples.items():
                tracking.log_bytes(encode_audio(wave, sr), f"samples/{name}.wav")
    return report


def _numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _numbers(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "speech"


def generate_speech(speech_model, llm_model, tokenizer, prompts, params) -> dict[str, bytes]:
    """WAV bytes per prompt (``<index>_<text>.wav``). A prompt is a transcript string or a mapping
    ``{text, speaker?}`` (a training speaker id) or ``{text, reference}`` (a WAV file path or
    bytes: zero-shot cloning of that voice)."""
    from xoron_pipelines.data.media import decode_audio, resample

    p = _params(params)
    cfg = speech_model.config
    if not cfg.speakers:
        raise ValueError("the speech model has no speaker table (train it with train_speech)")
    default = p.generate.speaker or cfg.speakers[0]
    entries = [{"text": q} if isinstance(q, str) else dict(q) for q in (prompts or [])]
    table, cloned = [], []
    for i, entry in enumerate(entries):
        text = str(entry.get("text") or "").strip()
        if not text:
            raise ValueError(f"speech prompt {i}: no text")
        ref = entry.get("reference")
        if ref is not None:
            data = Path(ref).read_bytes() if isinstance(ref, (str, Path)) else bytes(ref)
            wave, sr = decode_audio(data)
            cloned.append((i, text, resample(wave, sr, cfg.sample_rate)))
        else:
            speaker = entry.get("speaker") or default
            if speaker not in cfg.speakers:
                raise ValueError(f"speech prompt {i}: speaker {speaker!r} is not in the model's table ({len(cfg.speakers)} speakers, e.g. {cfg.speakers[:3]})")
            table.append((i, text, cfg.speakers.index(speaker)))
    llm_model = llm_model.cpu()
    speech_model = speech_model.cpu().eval()
    feats = tts.text_features(llm_model, tokenizer, [e[1] for e in table + cloned])
    out: dict[str, bytes] = {}
    scale = p.generate.length_scale
    if table:
        waves = tts.synthesize(speech_model, [feats[t] for _, t, _ in table], speaker_ids=[s for *_, s in table], length_scale=scale)
        out |= {f"{i:03d}_{_slug(t)}.wav": encode_audio(w, cfg.sample_rate) for (i, t, _), w in zip(table, waves)}
    if cloned:
        waves = tts.synthesize(speech_model, [feats[t] for _, t, _ in cloned], references=[r for *_, r in cloned], length_scale=scale)
        out |= {f"{i:03d}_{_slug(t)}.wav": encode_audio(w, cfg.sample_rate) for (i, t, _), w in zip(cloned, waves)}
    return dict(sorted(out.items()))


__all__ = ["SpeechParams", "train_speech", "evaluate_speech", "generate_speech", "RecognizerConfig"]
