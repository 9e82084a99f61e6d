"""The GPT-2 baseline: transformers' GPT2LMHeadModel with the parameter count of a Xoron config,
trainable by the stage orchestrator like our model."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from tests.pipelines_training.stage_helpers import packed_shards, stage
from xoron_pipelines.datasets.parquet_shards import PackedMixes
from xoron_pipelines.model import XoronForCausalLM, get_config
from xoron_pipelines.model.baseline import build_baseline, gpt2_config_matching, gpt2_parameter_count, parameter_counts
from xoron_pipelines.model.params_count import count_parameters
from xoron_pipelines.pipelines.training.nodes import train_causal_lm


@pytest.mark.parametrize("preset", ["nano", "nano-moe-mla", "nano-learned", "nano-peer"])
def test_the_baseline_has_the_parameter_count_of_the_model(preset):
    config = get_config(preset)
    model = build_baseline("gpt2", config)
    actual = sum(p.numel() for p in model.parameters())
    assert actual == gpt2_parameter_count(model.config)  # the analytic count is exact
    target = count_parameters(config)["total"]
    assert abs(actual - target) / target < 0.01, (actual, target)
    assert parameter_counts(model) == {"total": actual, "active_per_token": actual}  # dense
    assert parameter_counts(XoronForCausalLM(config))["total"] == target


def test_the_baseline_is_gpt2_style_and_reads_the_same_ids():
    config = get_config("nano", bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = build_baseline("gpt2", config)
    assert isinstance(model, GPT2LMHeadModel)
    gpt2 = model.config
    assert (gpt2.vocab_size, gpt2.n_positions) == (config.vocab_size, config.max_position_embeddings)
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.n_head) == (config.hidden_size, config.num_layers, config.num_heads)
    assert (gpt2.bos_token_id, gpt2.eos_token_id, gpt2.pad_token_id) == (0, 1, 2)
    assert gpt2.activation_function.startswith("gelu") and gpt2.n_inner != 4 * gpt2.n_embd  # solved width
    assert isinstance(model.transformer.h[0].ln_1, torch.nn.LayerNorm)  # LayerNorm, learned positions, dense
    assert model.transformer.wpe.weight.shape == (config.max_position_embeddings, config.hidden_size)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied like nano
    other = gpt2_config_matching(config, n_layer=2)  # fewer layers: a wider MLP keeps the count
    assert other.n_inner > gpt2.n_inner
    target = count_parameters(config)["total"]  # within half an MLP column (2 n_embd + 1) per layer
    assert abs(gpt2_parameter_count(other) - target) <= 2 * (2 * 128 + 1) / 2
    assert abs(gpt2_parameter_count(gpt2) - target) <= 4 * (2 * 128 + 1) / 2


def test_a_model_too_small_for_the_baseline_shape_is_refused():
    with pytest.raises(ValueError, match="fewer than a GPT-2 of n_embd=512"):
        gpt2_config_matching(get_config("nano"), n_embd=512, n_head=8)
    with pytest.raises(ValueError, match="unknown baseline 'bert'"):
        build_baseline("bert", get_config("nano"))


def test_the_stage_orchestrator_trains_the_baseline_and_resumes_it(tmp_path):
    """run_stage takes the GPT-2 model as it is: its own loss, no MoE statistics, safetensors
    checkpoints (tied weights) that a re-run resumes from, and the loss goes down."""
    config = get_config("nano", num_layers=2, vocab_size=512, max_position_embeddings=64)
    shards = packed_shards(tmp_path / "train", rows=32), packed_shards(tmp_path / "val", rows=8, seed=1)
    params = stage(tmp_path / "ckpt", train={"max_steps": 12, "learning_rate": 3e-3, "save_steps": 12})

    def run():
        torch.manual_seed(0)
        model = build_baseline("gpt2", config)
        return train_causal_lm(model, None, *shards, PackedMixes(tmp_path / "none"), params, stage="gpt2")

    logged = []
    torch.manual_seed(0)
    model, summary = train_causal_lm(
        build_baseline("gpt2", config),
        None,
        *shards,
        PackedMixes(tmp_path / "none"),
        params,
        stage="gpt2",
        on_log=lambda step, metrics: logged.append((step, metrics)),
    )
    assert isinstance(model, GPT2LMHeadModel) and summary["steps"] == 12
    losses = [m["loss"] for _, m in logged if "loss" in m]
    assert losses and losses[-1] < losses[0] and not any(k.startswith("moe/") for _, m in logged for k in m)
    again, resumed = run()
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith("checkpoint-12")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name  # bit-exact from the checkpoint
