"""Shared pieces of the generation tests: a tiny LLM + BPE tokenizer over the procedural
captions, media tables rendered by the lead's generators, and tiny generation parameters."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import torch

from xoron_pipelines.data.media import encode_image, encode_video, record
from xoron_pipelines.data.multiscale import resize_image
from xoron_pipelines.synth.media import clips, scenes


def media_table(kind: str, n_train: int, n_heldout: int, size=(32, 32), frames: int = 8, seed: int = 0) -> pd.DataFrame:
    """A media table (MEDIA_COLUMNS) of procedural scenes / clips; held-out rows from their own stream."""
    rows = []
    for split, n, stream in (("train", n_train, 0), ("heldout", n_heldout, 1)):
        rng = np.random.default_rng([seed, stream])
        for i in range(n):
            if kind == "image":
                # three objects do not fit a canvas under 32 px: render at 32 and shrink
                spec = scenes.sample_scene(rng, (max(size[0], 32), max(size[1], 32)))
                image = resize_image(scenes.render_scene(spec), tuple(size))
                media, caption = encode_image(image), scenes.describe(spec)
            else:
                spec = clips.sample_clip(rng, size, frames)
                media, caption = encode_video(clips.render_clip(spec)), clips.describe(spec)
            rows.append(
                record(
                    id=f"{kind}-{split}-{i}",
                    modality=kind,
                    split=split,
                    source="synth",
                    media=media,
                    width=size[1],
                    height=size[0],
                    frames=frames if kind == "video" else 0,
                    caption=caption,
                    attributes=spec.attributes(),
                )
            )
    return pd.DataFrame(rows)


@lru_cache(maxsize=1)
def tokenizer():
    from xoron_pipelines.data.tokenizer_training import train_bpe, wrap

    rng = np.random.default_rng(0)
    texts = [scenes.describe(scenes.sample_scene(rng, (32, 32))) for _ in range(200)]
    texts += [clips.describe(clips.sample_clip(rng, (32, 32), 8)) for _ in range(200)]
    return wrap(train_bpe(texts, vocab_size=300, min_frequency=1), model_max_length=64)


def llm(seed: int = 0):
    from xoron_pipelines import model as model_lib

    torch.manual_seed(seed)
    cfg = model_lib.get_config("nano", num_layers=1, vocab_size=len(tokenizer()), dropout=0.0)
    return model_lib.XoronForCausalLM(cfg).eval()


#: a tiny model and a short run (every stage test starts from these)
TINY_STAGE = {
    "hidden_size": 24,
    "depth": 1,
    "num_heads": 2,
    "patch_size": 4,
    "steps": 4,
    "batch_size": 4,
    "warmup_steps": 1,
    "sample_every": 2,
    "preview_prompts": 2,
}
