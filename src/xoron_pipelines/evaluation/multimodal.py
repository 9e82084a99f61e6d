"""Held-out evaluation of a multimodal stage, each figure beside chance and the blind baseline.

On the ``heldout`` rows of ``media_<modality>`` (items of :mod:`xoron_pipelines.training.multimodal`):

- **VQA** (image, video): the row's ``choices`` are scored as continuations of the question's
  context by summed log-likelihood (:func:`~xoron_pipelines.evaluation.multiple_choice.score_item`,
  as lm-evaluation-harness does); accuracy = the gold answer scores highest.
- **caption** (image, video): the same with ``caption_choices`` candidates: the row's caption and
  captions of other held-out rows that differ from it (seeded draw).
- **ASR** (audio): word error rate of the LLM's greedy transcript given the audio ("Transcribe the
  audio.") and of the audio encoder's CTC head (greedy: best label per frame, repeats merged,
  blanks dropped).

Every figure has its ``n`` and a 95% interval (Wilson for accuracies:
:func:`~xoron_pipelines.evaluation.stats.wilson_interval`; a seeded item bootstrap for WER),
chance (the mean of 1 / len(choices); for ASR none) and the **blind baseline**: the same model and
the same ids with the media slot left empty (no media passed: the model is exactly its LLM), which
is what the text alone gives away (answer priors, caption statistics).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from xoron_pipelines.evaluation.multiple_choice import MCItem, chance_level, score_item
from xoron_pipelines.evaluation.stats import BOOTSTRAP_RESAMPLES, wilson_interval
from xoron_pipelines.model.audio import word_errors
from xoron_pipelines.training.multimodal import Item, ItemTokenizer, items_of, media_inputs, pad_rows


# --------------------------------------------------------------------------- figures
def accuracy_figure(correct: Sequence[float], chance: float | None = None) -> dict[str, Any]:
    """n, correct, accuracy and its Wilson 95% interval (and chance when given)."""
    n, k = len(correct), float(sum(correct))
    lo, hi = wilson_interval(k, n)
    out = {"n": n, "correct": int(k), "accuracy": k / n if n else float("nan"), "ci95": [lo, hi]}
    if chance is not None:
        out["chance"] = chance
    return out


def wer_figure(references: Sequence[str], hypotheses: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """Corpus word error rate (total errors / total reference words), its n (utterances), words,
    and a seeded item-bootstrap 95% interval of that ratio."""
    errors = np.array([word_errors(r, h) for r, h in zip(references, hypotheses)], dtype=float)
    words = np.array([max(len(r.split()), 1) for r in references], dtype=float)
    rate = float(errors.sum() / words.sum()) if len(words) else float("nan")
    lo = hi = float("nan")
    if len(words) > 1:  # percentile bootstrap of the ratio of sums over resampled utterances
        idx = np.random.default_rng(seed).integers(0, len(words), size=(BOOTSTRAP_RESAMPLES, len(words)))
        lo, hi = np.percentile(errors[idx].sum(1) / words[idx].sum(1), [2.5, 97.5])
    return {"n": len(words), "words": int(words.sum()), "wer": rate, "ci95": [float(lo), float(hi)]}


# --------------------------------------------------------------------------- scoring
def _logits(model, ids: torch.Tensor, mask: torch.Tensor, media: dict[str, Any] | None) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, **(media or {}))
    return out.logits.float()


def _repeat(media: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
    return {k: v.index_select(0, index) for k, v in media.items()}


@torch.no_grad()
def choice_loglikelihoods(
    model, enc: ItemTokenizer, items: Sequence[Item], media: Sequence[np.ndarray], shape, blind: bool, batch_size: int
) -> list[list[float]]:
    """Per item, the summed log-likelihood of each of its choices (continuation ``choice + eos``
    after the item's context), with the item's media or blind."""
    out: list[list[float]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        rows, owner = [], []
        for j, item in enumerate(chunk):
            ctx = enc.context(item.prompt)
            for choice in item.choices:
                rows.append((ctx, enc.continuation(choice)))
                owner.append(j)
        ids = pad_rows([c + k for c, k in rows], enc.pad)
        mask = pad_rows([[1] * (len(c) + len(k)) for c, k in rows], 0)
        kwargs = None
        if not blind:
            kwargs = _repeat(media_inputs(enc.modality, [media[i.media] for i in chunk], shape), torch.tensor(owner))
        logp = _logits(model, ids, mask, kwargs).log_softmax(-1)
        scores = []
        for r, (c, k) in enumerate(rows):
            pos = torch.arange(len(c) - 1, len(c) + len(k) - 1)
            scores.append(float(logp[r, pos, torch.tensor(k)].sum()))
        for j in range(len(chunk)):
            out.append([s for s, o in zip(scores, owner) if o == j])
    return out


def multiple_choice(
    model, enc: ItemTokenizer, items: Sequence[Item], media, shape, batch_size: int
) -> tuple[dict[str, Any], list[int]]:
    """Accuracy with media and blind, chance, and the predicted choice index per item."""
    figures, predicted = {}, []
    mc = [MCItem(i.prompt, i.choices, i.choices.index(i.target)) for i in items]
    for name, blind in (("with_media", False), ("blind", True)):
        lls = choice_loglikelihoods(model, enc, items, media, shape, blind, batch_size)
        figures[name] = accuracy_figure([score_item(m, ll)["acc"] for m, ll in zip(mc, lls)])
        if not blind:
            predicted = [int(np.argmax(ll)) for ll in lls]
    chance = float(np.mean([chance_level(m) for m in mc]))
    return {**figures, "chance": chance}, predicted


def caption_items(items: Sequence[Item], k: int, seed: int) -> list[Item]:
    """Caption items with ``k`` candidates each: the right caption and ``k - 1`` distinct captions
    of other held-out rows (seeded); candidates sorted (their order carries no cue)."""
    pool = sorted({i.target for i in items})
    if len(pool) < k:
        raise ValueError(f"caption evaluation needs {k} distinct held-out captions, the split has {len(pool)}")
    rng = np.random.default_rng([seed, 1])
    out = []
    for item in items:
        others = [c for c in pool if c != item.target]
        picked = [others[i] for i in rng.choice(len(others), size=k - 1, replace=False)]
        out.append(Item(item.media, item.task, item.prompt, item.target, tuple(sorted([item.target, *picked]))))
    return out


@torch.no_grad()
def greedy_transcripts(
    model, enc: ItemTokenizer, items: Sequence[Item], media, blind: bool, batch_size: int, max_new_tokens: int
) -> list[str]:
    """The model's greedy continuation of each item's context (up to eos or ``max_new_tokens``),
    decoded; items of one batch share the context length (the same prompt)."""
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        ctx = [enc.context(i.prompt) for i in chunk]
        if len({len(c) for c in ctx}) != 1:
            raise ValueError("greedy_transcripts: the items of a batch must share the context length")
        ids = torch.tensor(ctx, dtype=torch.long)
        kwargs = None if blind else media_inputs(enc.modality, [media[i.media] for i in chunk], None)
        done = torch.zeros(len(chunk), dtype=torch.bool)
        new: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            logits = _logits(model, ids, torch.ones_like(ids), kwargs)[:, -1]
            nxt = torch.where(done, torch.full_like(done, enc.eos, dtype=torch.long), logits.argmax(-1))
            new.append(nxt)
            done |= nxt == enc.eos
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if bool(done.all()):
                break
        gen = torch.stack(new, dim=1).tolist() if new else [[] for _ in chunk]
        for row in gen:
            row = row[: row.index(enc.eos)] if enc.eos in row else row
            out.append(enc.decode(row))
    return out


# --------------------------------------------------------------------------- one stage
def evaluate_media(
    model,
    enc: ItemTokenizer,
    rows: pd.DataFrame,
    media: Sequence[np.ndarray],
    shape,
    *,
    batch_size: int,
    caption_choices: int,
    max_new_tokens: int,
    seed: int,
    ctc_decode=None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of a stage on held-out ``rows`` (see the module doc) and per-row samples
    (id, question, truth, prediction) for the artefacts. ``ctc_decode(audio, lengths) -> [str]``
    greedy-decodes the audio encoder's CTC head (audio only; None: no CTC figure)."""
    modality = enc.modality
    model.eval()
    metrics: dict[str, Any] = {"modality": modality, "heldout_rows": len(rows)}
    samples: list[dict[str, Any]] = []
    if modality in ("image", "video"):
        vqa = [i for i in items_of(rows, modality, ["vqa"]) if i.choices]
        if vqa:
            metrics["vqa"], predicted = multiple_choice(model, enc, vqa, media, shape, batch_size)
            samples = [
                {
                    "row": i.media,
                    "id": rows["id"].iloc[i.media],
                    "question": i.prompt,
                    "answer": i.target,
                    "predicted": i.choices[p],
                }
                for i, p in zip(vqa, predicted)
            ]
        captions = items_of(rows, modality, ["caption"])
        if captions:
            cap = caption_items(captions, caption_choices, seed)
            metrics["caption"], _ = multiple_choice(model, enc, cap, media, shape, batch_size)
    else:
        items = items_of(rows, modality, ["transcribe"])
        refs = [i.target for i in items]
        hyp = greedy_transcripts(model, enc, items, media, False, batch_size, max_new_tokens)
        blind = greedy_transcripts(model, enc, items, media, True, batch_size, max_new_tokens)
        metrics["asr"] = {"llm": wer_figure(refs, hyp, seed), "blind": wer_figure(refs, blind, seed)}
        ctc: list[str] = [""] * len(items)
        if ctc_decode is not None:
            ctc = []
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                kwargs = media_inputs("audio", [media[i.media] for i in chunk], None)
                ctc += list(ctc_decode(kwargs["audio"], kwargs["audio_lengths"]))
            metrics["asr"]["ctc"] = wer_figure(refs, ctc, seed)
        samples = [
            {"row": i.media, "id": rows["id"].iloc[i.media], "transcript": i.target, "llm": h, "blind": b, "ctc": c}
            for i, h, b, c in zip(items, hyp, blind, ctc)
        ]
    return metrics, samples


def flat_metrics(metrics: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """The numeric leaves of ``metrics`` as MLflow metric names (``eval/vqa/with_media/accuracy``;
    intervals as ``.../ci95_lo`` / ``ci95_hi``)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, name))
        elif isinstance(value, list) and len(value) == 2 and key == "ci95":
            out[f"{name}_lo"], out[f"{name}_hi"] = float(value[0]), float(value[1])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def sample_grid(media: Sequence[np.ndarray], samples: Sequence[dict[str, Any]], title: str, max_items: int = 12):
    """A matplotlib figure: each sample's image (a video's middle frame) with its question, the
    truth and the predicted answer (green when right, red when wrong)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    shown = list(samples)[:max_items]
    cols = min(4, max(1, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, s in zip(axes.ravel(), shown):
        img = media[s["row"]]
        ax.imshow(img[len(img) // 2] if img.ndim == 4 else img, interpolation="nearest")
        ok = s["predicted"] == s["answer"]
        ax.set_title(
            f"{s['question']}\ntruth: {s['answer']}  pred: {s['predicted']}", fontsize=8, color="green" if ok else "red"
        )
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def transcripts_json(samples: Sequence[dict[str, Any]]) -> str:
    return json.dumps([{k: v for k, v in s.items() if k != "row"} for s in samples], indent=2)


__all__ = [
    "accuracy_figure",
    "caption_items",
    "choice_loglikelihoods",
    "evaluate_media",
    "flat_metrics",
    "greedy_transcripts",
    "multiple_choice",
    "sample_grid",
    "transcripts_json",
    "wer_figure",
]
