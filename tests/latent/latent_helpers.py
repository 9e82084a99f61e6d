"""Shared pieces of the latent tests: a tiny decoder (nano Xoron + small BPE tokenizer), the
packaged MiniLM encoder, small parameter sets and short texts."""

from __future__ import annotations

from functools import lru_cache

import torch

from xoron_pipelines.datasets.latent_model import DecoderBundle
from xoron_pipelines.latent.encoder import PACKAGED_ENCODER
from xoron_pipelines.pipelines.latent.params import Params

TEXTS = [
    "Alice: Can we meet on Monday? Bob: Sure, at noon at the cafe.",
    "The quick brown fox jumps over the lazy dog.",
    "Carol reports that the app crashes on start; Dan will ship a fix tomorrow.",
    "Rain is expected over the hills tonight, with clear skies by morning.",
    "The library opens at nine and closes at five on weekdays.",
    "Eve bought apples, pears and a loaf of bread at the market.",
]
SUMMARIES = [
    "Alice and Bob meet Monday.",
    "A fox jumps.",
    "Dan fixes the crash.",
    "Rain tonight.",
    "Library hours.",
    "Eve went shopping.",
]

#: a small, fast model and short training (every test starts from these)
TINY = dict(
    latent_dim=16,
    latent_seq_len=4,
    prefix_len=3,
    middle_hidden_dim=32,
    middle_layers=2,
    middle_transformer_layers=1,
    middle_num_heads=2,
    adapter_num_heads=2,
    middle_dropout=0.0,
    adapter_dropout=0.0,
    num_encoder_unfrozen_layers=1,
    batch_size=3,
    gradient_accumulation_steps=1,
    max_seq_len=32,
    max_target_len=16,
    warmup_steps=0,
    use_fp16=False,
    use_bf16=False,
    use_gradient_checkpointing=False,
    async_checkpointing=False,
    progress=False,
    learning_rate=3e-3,
    pretrain_middle_epochs=1,
    pretrain_adapter_epochs=1,
    finetune_middle_epochs=1,
    finetune_adapter_epochs=1,
    max_generation_length=4,
    inference_examples=2,
)


def tiny_params(**overrides) -> Params:
    return Params.model_validate({**TINY, **overrides})


@lru_cache(maxsize=1)
def tokenizer():
    from xoron_pipelines.data.tokenizer_training import train_bpe, wrap

    return wrap(train_bpe((TEXTS + SUMMARIES) * 5, vocab_size=300, min_frequency=1), model_max_length=128)


def decoder_model(seed: int = 0):
    from xoron_pipelines import model as model_lib

    torch.manual_seed(seed)
    cfg = model_lib.get_config("nano", num_layers=1, vocab_size=len(tokenizer()), dropout=0.0)
    return model_lib.XoronForCausalLM(cfg).eval()


def bundle(path: str = "decoder", tok_path: str = "tokenizer") -> DecoderBundle:
    return DecoderBundle(decoder_model(), tokenizer(), path, tok_path)


def latent_model(p: Params | None = None):
    from xoron_pipelines.latent.inference import build_model

    p = p or tiny_params()
    b = bundle()
    model = build_model(p, PACKAGED_ENCODER, b.model)
    model.decoder_bundle = b
    return model
