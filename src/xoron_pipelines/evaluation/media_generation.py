"""Evaluation of the image / video generators that a generator cannot fool.

* **Prompt adherence** by the procedural corpus's exact analysers (``analyse_scene``: colour,
  shape, count, position; ``analyse_clip``: direction, colour, shape): the attributes read
  back from the generated pixels against the held-out prompt's ground truth, per attribute and
  all at once, each with n and a 95 % Wilson interval.
* **Baselines** beside it: the same generated items scored against a *shuffled* prompt (a
  derangement of the held-out prompts: what an image that ignores its prompt but looks like
  the corpus scores), and *unconditional* samples (the empty prompt) scored against the prompts.
* **CFG effect**: adherence at guidance scale 1 beside the configured scale.
* **Fréchet distance** of generated vs held-out real items on a fixed feature extractor: a
  frozen random conv net seeded once (:func:`feature_net`: two strided 3x3 convolutions with
  ReLU, mean- and max-pooled to 64 features; videos: the mean of their frames' features).
  Beside it the distance of a second set of real held-out items to the first (the floor a
  perfect generator reaches at this sample size).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch
from scipy import linalg

from xoron_pipelines.evaluation.stats import wilson_interval

IMAGE_ATTRIBUTES = ("colour", "shape", "count", "position")
VIDEO_ATTRIBUTES = ("direction", "colour", "shape")


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) with no fixed point (n >= 2): a random order, shifted by one."""
    order = rng.permutation(n)
    out = np.empty(n, dtype=int)
    out[order] = np.roll(order, 1)
    return out


def truth(kind: str, attributes: str) -> dict:
    """The ground truth the analysers read back, from a record's ``attributes`` JSON."""
    a = json.loads(attributes)
    if kind == "image":
        return {k: (a["count"] if k == "count" else a[k]) for k in IMAGE_ATTRIBUTES}
    return {k: a[k] for k in VIDEO_ATTRIBUTES}


def analyse(kind: str, items: np.ndarray) -> list[dict]:
    from xoron_pipelines.synth.media.clips import analyse_clip
    from xoron_pipelines.synth.media.scenes import analyse_scene

    return [analyse_scene(x) if kind == "image" else analyse_clip(x) for x in items]


def adherence(found: Sequence[dict], truths: Sequence[dict], attributes: Sequence[str]) -> dict:
    """Per attribute and ``all``: {rate, hits, n, low, high} (Wilson 95 %)."""
    out = {}
    for name in [*attributes, "all"]:
        keys = attributes if name == "all" else [name]
        hits = sum(all(f.get(k) == t[k] for k in keys) for f, t in zip(found, truths, strict=True))
        low, high = wilson_interval(hits, len(truths))
        out[name] = {"rate": hits / max(len(truths), 1), "hits": hits, "n": len(truths), "low": low, "high": high}
    return out


def feature_net(seed: int = 0) -> torch.nn.Module:
    """The frozen random feature extractor of the Fréchet distance (fixed by ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
    )
    for p in net.parameters():
        p.requires_grad_(False)
        p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() > 1 else 0.1))
    return net.eval()


@torch.no_grad()
def features(items: np.ndarray, net: torch.nn.Module) -> np.ndarray:
    """(N, 64) features of uint8 images (N, H, W, 3) or videos (N, T, H, W, 3)."""
    x = torch.tensor(np.asarray(items), dtype=torch.float32) / 255
    video = x.dim() == 5
    flat = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
    f = net(flat)
    f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1)
    if video:
        f = f.view(x.shape[0], x.shape[1], -1).mean(1)
    return f.double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets (N, D); ``eps``
    on the covariances' diagonal keeps the square root defined when a set has fewer items than
    features (or none varies), as the reference FID code does."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    offset = eps * np.eye(a.shape[1])
    sa, sb = np.cov(a, rowvar=False) + offset, np.cov(b, rowvar=False) + offset
    covmean = np.real(linalg.sqrtm(sa @ sb))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def evaluate_generator(
    kind: str,
    generate,
    prompts: Sequence[str],
    truths: Sequence[dict],
    real_a: np.ndarray,
    real_b: np.ndarray,
    cfg_scale: float,
    seed: int,
) -> dict:
    """The evaluation table of one generator. ``generate(prompts, cfg_scale, unconditional)`` ->
    uint8 items; ``truths``: the prompts' ground truth; ``real_a`` / ``real_b``: two disjoint
    sets of held-out real items for the Fréchet distances."""
    attrs = IMAGE_ATTRIBUTES if kind == "image" else VIDEO_ATTRIBUTES
    rng = np.random.default_rng(seed)
    guided = generate(prompts, cfg_scale, False)
    found = analyse(kind, guided)
    perm = derangement(len(truths), rng)
    report = {
        "kind": kind,
        "n_prompts": len(prompts),
        "cfg_scale": cfg_scale,
        "adherence": adherence(found, truths, attrs),
        "shuffled_prompt_baseline": adherence(found, [truths[i] for i in perm], attrs),
    }
    uncond = generate(prompts, 1.0, True)
    report["unconditional_baseline"] = adherence(analyse(kind, uncond), truths, attrs)
    if cfg_scale != 1.0:
        report["adherence_cfg_1"] = adherence(analyse(kind, generate(prompts, 1.0, False)), truths, attrs)
    if kind == "video":
        report["chance"] = {"direction": 0.25}
    net = feature_net(0)
    fr = features(real_a, net)
    report["frechet"] = {
        "feature_extractor": "frozen random conv net (seed 0): 2 strided 3x3 convs + ReLU, mean+max pooled, 64 features",
        "generated_vs_real": frechet_distance(features(guided, net), fr),
        "unconditional_vs_real": frechet_distance(features(uncond, net), fr),
        "real_vs_real": frechet_distance(features(real_b, net), fr),
        "n": int(min(len(guided), len(real_a))),
    }
    return report
