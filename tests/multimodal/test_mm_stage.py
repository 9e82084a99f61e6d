"""A multimodal stage through the text stages' orchestrator: freezing and LoRA take effect (LoRA on
the wrapped LLM, merged at the end), the video / audio batches train (the ASR term logged), and a
re-run resumes bit-exactly from the finished checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from mm_tables import audio_table, image_table, video_table

from xoron_pipelines.pipelines.multimodal import nodes

BASE = yaml.safe_load((Path(__file__).parents[2] / "conf/base/parameters_multimodal.yml").read_text())["multimodal"]
SMALL_MODEL = {
    "vision": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 1},
    "video": {"hidden_size": 32, "num_heads": 2, "num_video_encoder_layers": 1, "use_video_temporal_moe": False},
    "audio": {"hidden_size": 32, "num_heads": 2, "num_layers": 1, "feature_channels": 16},
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from xoron_pipelines.data import tokenizer_training as tt
    from xoron_pipelines.datasets.tokenizer import HFTokenizerDataset
    from xoron_pipelines.synth.media.speech import VOCABULARY

    texts = [*image_table(16, 0).caption, *video_table(4, 0).caption, " ".join(VOCABULARY)] * 3
    ds = HFTokenizerDataset(str(tmp_path_factory.mktemp("tok") / "tokenizer"))
    ds.save(tt.wrap(tt.train_bpe(texts, vocab_size=300, min_frequency=1), model_max_length=128))
    return ds.load()


def _llm(tokenizer):
    from xoron_pipelines.model import XoronForCausalLM, get_config

    torch.manual_seed(0)
    return XoronForCausalLM(
        get_config("nano", vocab_size=len(tokenizer), num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64)
    )


def _params(tmp_path, stage: str, **stage_changes):
    p = copy.deepcopy(BASE)
    p["mode"] = stage
    p["model"] = {**p["model"], **{k: {**p["model"][k], **v} for k, v in SMALL_MODEL.items()}}
    sp = p["stages"][stage]
    sp["train"].update(max_steps=3, warmup_steps=1, batch_size=4)
    sp["eval"] = {"max_batches": 1, "batch_size": 4}
    sp["checkpoint_dir"] = str(tmp_path / "ckpt")
    sp["tracking"] = {"enabled": False}
    sp.update(stage_changes)
    return p


def _train(tokenizer, table, params, stage):
    model = nodes.initialise_multimodal(_llm(tokenizer), tokenizer, params)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trained, summary = nodes.train_modality(model, tokenizer, table, params, stage=stage)
    return start, trained, summary


def _changed(start, model, prefix):
    state = model.state_dict()
    keys = [k for k in start if k.startswith(prefix)]
    assert keys
    return any(not torch.equal(start[k], state[k]) for k in keys)


def test_freeze_keeps_the_llm_and_trains_the_rest(tokenizer, tmp_path):
    params = _params(tmp_path, "image", freeze=["llm.*"])
    start, trained, summary = _train(tokenizer, image_table(8, 4), params, "image")
    assert summary["steps"] == 3 and summary["trainable_params"] < summary["total_params"]
    assert not _changed(start, trained, "llm.") and _changed(start, trained, "encoders.image.")
    assert _changed(start, trained, "projectors.image.")


def test_lora_trains_the_llm_through_adapters_then_merges(tokenizer, tmp_path):
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "train_lora_only": True, "use_lora_plus": True}
    params = _params(tmp_path, "image", lora=lora)
    start, trained, summary = _train(tokenizer, image_table(8, 4), params, "image")
    assert not any("lora_" in k for k in trained.state_dict())  # merged into the weights
    assert trained.state_dict().keys() == start.keys()
    assert _changed(start, trained, "llm.model.layers.")  # the merged adapters moved the projections
    assert not _changed(start, trained, "llm.model.embed_tokens.")  # train_lora_only: base weights frozen
    assert summary["trainable_params"] < summary["total_params"]


def test_video_and_audio_stages_train_and_resume(tokenizer, tmp_path):
    params = _params(tmp_path, "video")
    _, video, summary = _train(tokenizer, video_table(8, 4, size=16, frames=4), params, "video")
    assert summary["steps"] == 3 and summary["train_rows"] == 8
    params = _params(tmp_path, "audio", tasks=["transcribe"])
    table = audio_table(8, 4)
    _, audio, summary = _train(tokenizer, table, params, "audio")
    assert summary["steps"] == 3 and summary["resumed_from"] is None
    _, again, resumed = _train(tokenizer, table, params, "audio")
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith("checkpoint-3")
    a, b = audio.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
