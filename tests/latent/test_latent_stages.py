"""Stage logic with the packaged MiniLM encoder and a nano decoder: which modules train, that
the compression learns, encoder unfreezing, engine config, inference and save / load."""

from __future__ import annotations

import pytest
import torch
from latent_helpers import SUMMARIES, TEXTS, bundle, latent_model, tiny_params

from xoron_pipelines.latent.data import RowBatches, Rows, cap_rows, stage_tensors
from xoron_pipelines.latent.model import encoder_layers
from xoron_pipelines.latent.stages import (
    set_trainable,
    stage_loss,
    stage_spec,
    train_config,
    train_stage,
    trainable_parts,
)


@pytest.fixture(scope="module")
def model():
    return latent_model(tiny_params(num_encoder_unfrozen_layers=2))


def batches(model, p, stage, encoder_trains, rows=None):
    spec = stage_spec(stage, p)
    rows = rows or Rows(TEXTS, TEXTS if spec.identity else SUMMARIES, [None] * len(TEXTS))
    t = stage_tensors(
        model,
        rows,
        kind=spec.kind,
        identity=spec.identity,
        encoder_trains=encoder_trains,
        tokenizer=model.decoder_bundle.tokenizer,
        max_target_len=p.max_target_len,
    )
    return RowBatches(t, p.stage_value(stage, "batch_size"), p.seed)


def test_trainable_parts_per_stage_and_phase():
    p = tiny_params()
    spec = lambda s, q=p: stage_spec(s, q)  # noqa: E731
    assert trainable_parts(spec("pretrain_middle"), p, True) == {"compression", "middle"}
    assert trainable_parts(spec("finetune_middle"), p, True) == {"compression", "middle"}  # finetune_only
    assert trainable_parts(spec("pretrain_adapter"), p, False) == {"adapter"}
    assert trainable_parts(spec("finetune_middle"), p, False) == {"middle"}
    q = tiny_params(freeze_encoder_compression_in_pipeline=False)
    assert trainable_parts(spec("pretrain_middle", q), q, True) == {"encoder", "compression", "middle"}
    assert trainable_parts(spec("finetune_adapter", q), q, False) == {"encoder", "compression", "adapter"}
    q = tiny_params(num_encoder_unfrozen_layers=0, freeze_encoder_compression_in_pipeline=False)
    assert trainable_parts(spec("pretrain_middle", q), q, True) == {"compression", "middle"}
    q = tiny_params(training_phase="phase1")
    assert trainable_parts(spec("finetune_adapter", q), q, False) == {"adapter"}
    assert trainable_parts(spec("pretrain_middle", q), q, True) == set()
    q = tiny_params(training_phase="phase2")
    assert trainable_parts(spec("finetune_adapter", q), q, False) == {"encoder", "compression"}
    q = tiny_params(training_phase="phase3")
    assert trainable_parts(spec("pretrain_adapter", q), q, False) == set()
    q = tiny_params(training_phase="phase3", adapter_pretrain_use_middle=True)
    assert trainable_parts(spec("pretrain_adapter", q), q, False) == {"middle"}


def test_pipeline_switches_select_stages():
    assert tiny_params().stages() == ["pretrain_middle", "pretrain_adapter", "finetune_middle", "finetune_adapter"]
    assert tiny_params(run_pretraining=False).stages() == ["finetune_middle", "finetune_adapter"]
    assert tiny_params(run_finetuning=False).stages() == ["pretrain_middle", "pretrain_adapter"]
    assert tiny_params(pipeline_mode="finetune_only").stages() == ["finetune_middle", "finetune_adapter"]


def test_stage_knobs_reach_the_engine_config():
    p = tiny_params(
        finetune_adapter_batch_size=2,
        finetune_adapter_epochs=3,
        gradient_accumulation_steps=2,
        use_bf16=True,
        use_torch_compile=True,
        torch_compile_mode="max-autotune",
        save_every=7,
        async_checkpointing=True,
        use_gradient_checkpointing=True,
        warmup_steps=100,
        weight_decay=0.5,
    )
    cfg = train_config(stage_spec("finetune_adapter", p), p, batches=5, eval_steps=2)
    assert (cfg.batch_size, cfg.max_steps, cfg.gradient_accumulation_steps) == (2, 7, 2)  # floor(3 * 5 / 2)
    assert (cfg.precision, cfg.compile, cfg.compile_mode, cfg.save_steps) == ("bf16", True, "max-autotune", 7)
    assert cfg.async_checkpointing and cfg.gradient_checkpointing and cfg.weight_decay == 0.5
    assert cfg.warmup_steps == 6  # capped below the stage's 7 steps (the last step runs at the peak lr)
    assert tiny_params(use_bf16=False, use_fp16=True).precision == "fp16"
    assert tiny_params(use_bf16=False).precision == "fp32"
    assert train_config(stage_spec("pretrain_middle", p), p, 5, 1).batch_size == p.batch_size
    q = tiny_params(pretrain_adapter_epochs=None, num_epochs=2, learning_rate=1e-3)
    cfg = train_config(stage_spec("pretrain_adapter", q), q, batches=5, eval_steps=1)
    assert cfg.max_steps == 10 and cfg.learning_rate == 1e-3


def test_per_source_caps_and_total_cap():
    rows = Rows([f"t{i}" for i in range(6)], [""] * 6, ["a", "a", "a", "b", "b", "c"])
    assert cap_rows(rows, {"a": 1, "b": 0}, None).sources == ["t0", "t5"]
    assert cap_rows(rows, {}, 4).sources == ["t0", "t1", "t2", "t3"]
    p = tiny_params(pretrain_adapter_max_samples_wikitext=2, wikitext_dataset="a", arxiv_dataset=None)
    assert p.dataset_caps("pretrain_adapter") == {"a": 2}
    assert p.dataset_caps("pretrain_middle") == {}


def test_encoder_unfreezes_exactly_the_top_layers(model):
    p = tiny_params(num_encoder_unfrozen_layers=2)
    set_trainable(model, {"encoder"}, 2)
    b = batches(model, p, "pretrain_middle", encoder_trains=True).batch(0, 0)
    stage_loss(model, stage_spec("pretrain_middle", p), p, b)[0].backward()
    layers = encoder_layers(model.encoder.model)
    assert len(layers) == 6
    for i, layer in enumerate(layers):
        grads = [q.grad for q in layer.parameters()]
        if i >= 4:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), i
        else:
            assert all(g is None for g in grads) and not any(q.requires_grad for q in layer.parameters()), i
    assert all(q.grad is None for q in model.encoder.model.embeddings.parameters())
    assert all(q.grad is None for q in model.compression.parameters())
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)


def test_pretrain_middle_trains_the_compression(model, tmp_path):
    p = tiny_params(
        num_encoder_unfrozen_layers=2,
        pretrain_middle_epochs=6,
        checkpoint_dir=str(tmp_path),
        freeze_encoder_compression_in_pipeline=False,
    )
    spec = stage_spec("pretrain_middle", p)
    parts = trainable_parts(spec, p, True)
    src = batches(model, p, "pretrain_middle", encoder_trains=True)
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    summary = train_stage(model, spec, p, parts, src, src)
    after = model.state_dict()
    changed = lambda prefix: any(not torch.equal(snap[k], after[k]) for k in snap if k.startswith(prefix))  # noqa: E731
    assert changed("compression.") and changed("middle.") and changed("encoder.model.encoder.layer.5.")
    assert not changed("encoder.model.encoder.layer.3.") and not changed("adapter.") and not changed("decoder.")
    assert summary["steps"] == 12 and model.encoder_trained and parts == {"encoder", "compression", "middle"}
    assert summary["after"]["reconstruction"] < summary["before"]["reconstruction"]
    assert summary["after"]["eval_loss"] < summary["before"]["eval_loss"]


def test_adapter_stage_lowers_lm_loss_and_generation(model, tmp_path):
    from xoron_pipelines.latent.inference import generate, generate_ids, latents

    p = tiny_params(pretrain_adapter_epochs=4, checkpoint_dir=str(tmp_path))
    spec = stage_spec("pretrain_adapter", p)
    src = batches(model, p, "pretrain_adapter", encoder_trains=False)
    assert "src_emb" in src.tensors and "src_ids" not in src.tensors  # frozen encoder: encoded once
    summary = train_stage(model, spec, p, {"adapter"}, src, src)
    assert summary["after"]["lm_loss"] < summary["before"]["lm_loss"]
    tok = model.decoder_bundle.tokenizer
    greedy = generate(model, tok, TEXTS[:2], max_generation_length=3, do_sample=False)
    assert greedy == generate(model, tok, TEXTS[:2], max_generation_length=3, do_sample=False)
    sampled = [
        generate(model, tok, TEXTS[:2], max_generation_length=3, temperature=1.5, top_k=0, top_p=1.0, seed=s)
        for s in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1]
    ids = generate_ids(model, tok, TEXTS[:2], max_generation_length=3, do_sample=False)
    assert ids.shape[0] == 2 and 1 <= ids.shape[1] <= 3
    z, valid = latents(model, TEXTS[:2])
    assert z.shape == (2, 4, 16) and valid[:, 0].all()


def test_stop_latent_marks_unused_slots_and_cuts_generation(model):
    p = tiny_params()
    ids, mask = model.encoder.tokenize(["Short.", " ".join(["word"] * 30)])
    z = model.compression(model.encoder(ids, mask))
    stopped, valid = model.with_stop(z, mask.sum(1))
    n_tok = mask.sum(1).tolist()
    expect = [min(4, max(1, -(-n * 4 // model.cfg.encoder_max_len))) for n in n_tok]
    assert valid.sum(1).tolist() == expect and expect[0] < expect[1]
    assert torch.allclose(stopped[0, expect[0] :], model.stop_latent.expand(4 - expect[0], -1))
    assert model.valid_until_stop(stopped).tolist() == valid.tolist()
    assert p.stop_latent_cosine_threshold == 0.99


def test_save_and_load_round_trip(model, tmp_path):
    from xoron_pipelines.datasets.latent_model import LatentModelDataset
    from xoron_pipelines.latent.inference import artifact, from_artifact, latents

    ds = LatentModelDataset(str(tmp_path / "m"))
    ds.save(artifact(model, "w.safetensors", model.decoder_bundle, {"stage": "x"}))
    assert sorted(f.name for f in (tmp_path / "m").iterdir()) == ["config.json", "w.safetensors"]
    b = bundle()
    b.model.load_state_dict(model.decoder.state_dict())
    loaded, _ = from_artifact(ds.load(), b)
    z1, _ = latents(model, TEXTS[:3])
    z2, _ = latents(loaded, TEXTS[:3])
    assert torch.allclose(z1, z2, atol=1e-5)


def test_hidden_dims_are_derived_and_checked():
    from xoron_pipelines.latent.encoder import PACKAGED_ENCODER
    from xoron_pipelines.latent.inference import build_model

    dec = bundle().model
    with pytest.raises(ValueError, match="modernbert_hidden_dim=768 but the model has hidden size 384"):
        build_model(tiny_params(modernbert_hidden_dim=768), PACKAGED_ENCODER, dec)
    with pytest.raises(ValueError, match="gpt2_hidden_dim=640"):
        build_model(tiny_params(gpt2_hidden_dim=640), PACKAGED_ENCODER, dec)


def test_loss_weights_combine_the_parts(model):
    p = tiny_params()
    b = batches(model, p, "finetune_middle", encoder_trains=False).batch(0, 0)
    spec = stage_spec("finetune_middle", p)
    model.eval()
    _, parts = stage_loss(model, spec, p, b)
    assert parts["contrastive"] > 0 and parts["latent_mse"] > 0 and parts["reconstruction"] > 0
    for w in ((1.0, 0.1, 1.0), (2.0, 0.0, 0.5), (0.0, 3.0, 0.0)):
        q = tiny_params(latent_mse_weight=w[0], contrastive_weight=w[1], reconstruction_weight=w[2])
        loss, _ = stage_loss(model, spec, q, b)
        expect = w[0] * parts["latent_mse"] + w[1] * parts["contrastive"] + w[2] * parts["reconstruction"]
        assert float(loss) == pytest.approx(expect, rel=1e-5)


def test_length_limits(model):
    from latent_helpers import tokenizer

    from xoron_pipelines.latent.data import decoder_ids

    assert model.encoder.max_len == 32  # max_seq_len, under MiniLM's own 256
    ids, mask = model.encoder.tokenize([" ".join(["word"] * 100)])
    assert ids.shape[1] == 32
    tok = tokenizer()
    ids, mask = decoder_ids(tok, [TEXTS[0], "Hi."], 5)
    assert ids.shape[1] == 5 and ids[0, 4] == tok.eos_token_id and mask[0].sum() == 5
    assert ids[1, int(mask[1].sum()) - 1] == tok.eos_token_id


def test_stage_rows_apply_max_samples():
    from types import SimpleNamespace

    from xoron_pipelines.pipelines.latent.nodes import stage_rows

    recs = [{"index": i, "embedding": [float(i)]} for i in range(6)]
    cache = SimpleNamespace(train=recs, val=[])
    texts = {i: (f"s{i}", f"t{i}", "stdlib_prose" if i < 4 else "stdlib_code") for i in range(6)}
    train, val = stage_rows(cache, texts, tiny_params(max_train_samples=4), "finetune_middle", True)
    assert len(train) == 4 and val is train and train.emb[:, 0].tolist() == [0, 1, 2, 3]
    train, _ = stage_rows(
        cache, texts, tiny_params(max_train_samples=4, finetune_middle_max_samples=2), "finetune_middle", False
    )
    assert train.sources == ["s0", "s1"] and train.emb is None
    train, _ = stage_rows(cache, texts, tiny_params(pretrain_middle_max_samples_wikitext=1), "pretrain_middle", False)
    assert train.sources == ["s0", "s4", "s5"]
    train, _ = stage_rows(cache, texts, tiny_params(max_train_samples=1), "pretrain_middle", False)
    assert len(train) == 6  # max_train_samples caps the pairs only


def test_prefix_ablation_shows_the_latent_carries_information(tmp_path):
    """A briefly trained adapter: the decoder's loss with each text's own prefix is below its loss
    given another row's prefix (latents rolled across the batch) and an all-zero-latent prefix."""
    from xoron_pipelines.latent.stages import prefix_ablation

    model = latent_model(tiny_params())
    p = tiny_params(pretrain_adapter_epochs=80, learning_rate=3e-3, checkpoint_dir=str(tmp_path))
    spec = stage_spec("pretrain_adapter", p)
    src = batches(model, p, "pretrain_adapter", encoder_trains=False)
    untrained = prefix_ablation(model, spec, src)
    summary = train_stage(model, spec, p, {"adapter"}, src, src)
    ab = summary["prefix_ablation"]
    assert set(ab) == {"prefix_loss", "shuffled_prefix_loss", "zero_latent_prefix_loss", "prefix_gain_vs_shuffled"}
    # the summary's own-prefix figure is the stage's evaluation loss (token-weighted over the same rows)
    assert ab["prefix_loss"] == pytest.approx(summary["after"]["eval_loss"], rel=0.05)
    assert ab["prefix_loss"] < ab["shuffled_prefix_loss"] and ab["prefix_loss"] < ab["zero_latent_prefix_loss"]
    assert ab["prefix_gain_vs_shuffled"] == pytest.approx(ab["shuffled_prefix_loss"] - ab["prefix_loss"])
    assert ab["prefix_gain_vs_shuffled"] > 10 * abs(untrained["prefix_gain_vs_shuffled"])  # learned, not noise
    assert prefix_ablation(model, spec, src) == ab  # deterministic (eval mode, fixed roll)
    with pytest.raises(ValueError, match="no decoder objective"):
        prefix_ablation(model, stage_spec("pretrain_middle", p), src)
