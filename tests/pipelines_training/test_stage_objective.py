"""The stage loss is seed 000's modality-weighted sum (``llm_loss_weight`` x the LM loss), and
seed 002's PEER usage logging (``log_expert_usage`` / ``log_freq``) takes effect."""

from __future__ import annotations

import pytest
import torch

from tests.pipelines_training.stage_helpers import chat_rows, packed_shards, stage
from tests.training.finetune_helpers import chat_tokenizer, nano_model
from xoron_pipelines.datasets.parquet_shards import PackedMixes
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training import TensorBatchSource, TrainConfig, train
from xoron_pipelines.training import stage as stage_mod
from xoron_pipelines.training.losses import LossWeights
from xoron_pipelines.training.stage import ModelStats, stage_objective


# ------------------------------------------------------------------------------ llm_loss_weight
def test_llm_loss_weight_scales_the_stage_loss_and_its_gradient(tmp_path):
    tok = chat_tokenizer()
    synth = {"chat": lambda: chat_rows(20)}
    out = {}
    for w in (1.0, 2.5):
        params = stage(
            tmp_path / f"ck{w}",
            sources=["chat"],
            max_seq_len=64,
            loss_weights={"llm_loss_weight": w},
            train={"max_steps": 1, "max_grad_norm": None},
        )
        _, out[w] = nodes.train_sft(nano_model(vocab_size=len(tok)), tok, synth, params, stage="t")
    assert out[2.5]["train_loss"] == pytest.approx(2.5 * out[1.0]["train_loss"], rel=1e-5)
    assert out[2.5]["grad_norm"] == pytest.approx(2.5 * out[1.0]["grad_norm"], rel=1e-4)


def test_the_objective_keeps_the_token_weighting_bit_exactly(tmp_path):
    """With llm_loss_weight 1 the stage objective trains exactly like the engine's own LM loss:
    micro-batches of different token counts stay weighted by their tokens (not 1/k each)."""
    ids = torch.randint(0, 512, (8, 16), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([16, 3, 16, 5, 9, 16, 2, 12])
    cfg = TrainConfig(
        learning_rate=1e-2,
        max_steps=2,
        batch_size=2,
        gradient_accumulation_steps=2,
        seed=0,
        save_steps=100,
        logging_steps=1,
    )
    plain, weighted = nano_model(), nano_model()
    train(plain, TensorBatchSource(ids, 2, 0, lengths=lengths), cfg, ckpt_dir=tmp_path / "a", progress=False)
    objective = stage_objective(weighted, LossWeights())
    assert objective.token_weighted
    train(
        weighted,
        TensorBatchSource(ids, 2, 0, lengths=lengths),
        cfg,
        ckpt_dir=tmp_path / "b",
        progress=False,
        loss_fn=objective,
    )
    a, b = plain.state_dict(), weighted.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    equal_weights = nano_model()  # a plain custom loss_fn weighs micro-batches equally: another result
    train(
        equal_weights,
        TensorBatchSource(ids, 2, 0, lengths=lengths),
        cfg,
        ckpt_dir=tmp_path / "c",
        progress=False,
        loss_fn=lambda m, batch: m(**batch).loss,
    )
    assert not all(torch.equal(a[k], v) for k, v in equal_weights.state_dict().items())


def test_objective_terms_are_combined_with_the_modality_weights():
    model = nano_model()
    batch = {"input_ids": torch.arange(8).view(1, 8), "labels": torch.arange(8).view(1, 8)}
    objective = stage_objective(model, LossWeights(llm_loss_weight=0.25), lm=lambda m, b: m(**b).loss)
    assert not objective.token_weighted
    (term,) = objective.terms(model, batch).values()
    assert float(objective(model, batch)) == pytest.approx(0.25 * float(term))


# ------------------------------------------------------------------------------ PEER usage logging
def _peer_metrics(tmp_path, monkeypatch, **peer_config):
    seen: list[tuple[int, set[str]]] = []
    real = stage_mod.tracking.StageRecorder.log
    monkeypatch.setattr(
        stage_mod.tracking.StageRecorder,
        "log",
        lambda self, step, m: (seen.append((step, set(m))), real(self, step, m))[1],
    )
    shards = packed_shards(tmp_path / "train", rows=24), packed_shards(tmp_path / "val", rows=8, seed=1)
    model = nano_model("nano-peer", num_layers=3, peer_config=peer_config)
    params = stage(tmp_path / "ck", train={"max_steps": 6, "logging_steps": 1})
    nodes.train_causal_lm(model, None, *shards, PackedMixes(tmp_path / "none"), params, stage="s")
    peer_steps = [step for step, names in seen if any(n.startswith("peer/") and "final" not in n for n in names)]
    return model, peer_steps, [step for step, names in seen if "loss" in names]


def test_peer_usage_is_logged_every_log_freq_steps(tmp_path, monkeypatch):
    _, peer_steps, log_steps = _peer_metrics(tmp_path, monkeypatch, log_expert_usage=True, log_freq=2)
    assert log_steps == [1, 2, 3, 4, 5, 6]
    assert peer_steps == [2, 4, 6]


def test_peer_usage_is_neither_counted_nor_logged_when_disabled(tmp_path, monkeypatch):
    model, peer_steps, log_steps = _peer_metrics(tmp_path, monkeypatch, log_expert_usage=False, log_freq=2)
    assert log_steps == [1, 2, 3, 4, 5, 6] and peer_steps == []
    peers = [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "usage_counts")]
    assert peers and all(int(p.usage_counts.sum()) == 0 for p in peers)


def test_model_stats_cadence_reaches_the_first_logging_step_after_each_multiple():
    model = nano_model("nano-peer", num_layers=3, peer_config={"log_freq": 5})
    stats = ModelStats(model.config)
    logged = [step for step in range(2, 21, 2) if any(k.startswith("peer/") for k in stats(model, step=step))]
    assert logged == [6, 10, 16, 20]  # logging every 2 steps, usage every 5: 6 (>= 5), 10, 16 (>= 15), 20


def test_seed_002_logging_knobs_are_validated():
    with pytest.raises(ValueError, match="peer_log_freq=0 must be a positive integer"):
        nano_model("nano-peer", num_layers=3, peer_config={"log_freq": 0})
    with pytest.raises(ValueError, match="peer_log_expert_usage='yes' must be true or false"):
        nano_model("nano-peer", num_layers=3, peer_config={"log_expert_usage": "yes"})
