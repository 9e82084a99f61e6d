"""Tiny multimodal models for the tests: a 2-layer LLM, one-block encoders, few media tokens."""

from __future__ import annotations

import copy

import torch

from xoron_pipelines.model import XoronForCausalLM, get_config
from xoron_pipelines.model.multimodal import MultimodalConfig, XoronMultimodalModel, media_prompt_ids

VOCAB = 512
#: tokens per item: image 4, video 3, audio 2 (distinct, so a slot of the wrong modality shows)
TOKENS = {"image": 4, "video": 3, "audio": 2}


def tiny_config(**overrides) -> MultimodalConfig:
    knobs = {
        "vision": {
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "intermediate_size": 64,
            "use_vision_dual_stream": False,
            "use_vision_titok": False,
        },
        "video": {
            "hidden_size": 32,
            "num_heads": 2,
            "num_video_encoder_layers": 1,
            "intermediate_size": 64,
            "use_video_temporal_moe": False,
        },
        "audio": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "audio_kv_lora_rank": 8, "feature_channels": 16},
        "num_vision_tokens": TOKENS["image"],
        "num_video_tokens": TOKENS["video"],
        "num_audio_tokens": TOKENS["audio"],
        "projector_layers": 1,
        "projector_heads": 2,
        "cross_attention_every": 1,
        "cross_attention_heads": 2,
        **overrides,
    }
    return MultimodalConfig.model_validate(knobs)


def tiny_llm(tokenizer, seed: int = 0) -> XoronForCausalLM:
    torch.manual_seed(seed)
    cfg = get_config(
        "nano",
        vocab_size=VOCAB,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return XoronForCausalLM(cfg).eval()


def tiny_model(tokenizer, seed: int = 0, llm=None, **overrides) -> XoronMultimodalModel:
    llm = tiny_llm(tokenizer, seed) if llm is None else llm
    torch.manual_seed(seed + 1)
    return XoronMultimodalModel(tiny_config(**overrides), llm, tokenizer).eval()


def open_gates(model: XoronMultimodalModel, value: float = 0.7) -> None:
    """Set every fusion gate non-zero (as after training), so fusion changes the LLM's output."""
    with torch.no_grad():
        for block in model.fusion.blocks.values():
            block.attn_gate.fill_(value)
            block.ff_gate.fill_(-value)


def twin(model: XoronMultimodalModel, **overrides) -> XoronMultimodalModel:
    """The same weights under a config with ``overrides`` (a fresh build, state dict copied)."""
    llm = copy.deepcopy(model.llm)
    other = XoronMultimodalModel(model.config.model_copy(update=overrides), llm, media_token_ids=model.media_token_ids)
    other.load_state_dict(model.state_dict())
    return other.eval()


def slot(tokenizer, modality: str) -> list[int]:
    return media_prompt_ids(tokenizer, modality, TOKENS[modality])


def mixed_batch(tokenizer, seed: int = 0) -> dict:
    """Three rows: row 0 two images and text, row 1 text only, row 2 a video then an audio clip
    (lengths equalised with text tokens); media in marker order."""
    g = torch.Generator().manual_seed(seed)
    bos = [tokenizer.bos_token_id]
    text = [int(t) for t in torch.randint(10, 400, (40,), generator=g)]
    rows = [
        bos + slot(tokenizer, "image") + text[:3] + slot(tokenizer, "image") + text[3:5],
        bos + text[5:12],
        bos + text[12:13] + slot(tokenizer, "video") + slot(tokenizer, "audio") + text[13:15],
    ]
    width = max(map(len, rows))
    rows = [r + text[20 : 20 + width - len(r)] for r in rows]
    ids = torch.tensor(rows)
    return {
        "input_ids": ids,
        "labels": ids.clone(),
        "images": torch.rand(2, 3, 16, 16, generator=g),
        "videos": torch.rand(1, 4, 3, 16, 16, generator=g),
        "audio": 0.1 * torch.randn(1, 4800, generator=g),
        "audio_lengths": torch.tensor([4800]),
    }
