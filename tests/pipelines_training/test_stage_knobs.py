"""Every stage knob takes effect: the stage nodes called directly on tiny data (tracking off)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.pipelines_training.stage_helpers import chat_rows, packed_shards, preference_rows, stage
from tests.training.finetune_helpers import chat_tokenizer, nano_model
from xoron_pipelines.datasets.parquet_shards import PackedMixes
from xoron_pipelines.model import XoronForCausalLM
from xoron_pipelines.pipelines.training import nodes
from xoron_pipelines.training.stage_data import packed_source, unigram_entropy


@pytest.fixture()
def shards(tmp_path):
    return packed_shards(tmp_path / "train", rows=40), packed_shards(tmp_path / "val", rows=8, seed=1)


def _lm(model, shards, params, mixes=None):
    mixes = mixes if mixes is not None else PackedMixes(shards[0].path.parent / "no-mixes")
    return nodes.train_causal_lm(model, None, *shards, mixes, params, stage="s")


def _changed(before: XoronForCausalLM, after: XoronForCausalLM) -> dict[str, bool]:
    a, b = before.state_dict(), after.state_dict()
    return {k: not torch.equal(a[k], b[k]) for k in a}


def test_steps_batch_accumulation_and_max_samples_reach_the_engine(tmp_path, shards):
    params = stage(
        tmp_path / "ck", max_samples=24, train={"max_steps": 2, "batch_size": 3, "gradient_accumulation_steps": 2}
    )
    _, summary = _lm(nano_model(), shards, params)
    assert summary["steps"] == 2
    assert summary["tokens_seen"] == 2 * 2 * 3 * 32  # steps x accumulation x batch x seq_len
    assert summary["train_rows"] == 24  # max_samples
    assert packed_source(shards[0].path, 3, 0, 24).num_rows == 24


def test_learning_rate_schedule_and_warmup_are_the_stage_params(tmp_path, shards, monkeypatch):
    seen = []
    from xoron_pipelines.training import stage as stage_mod

    real_on = stage_mod.tracking.StageRecorder.log
    monkeypatch.setattr(
        stage_mod.tracking.StageRecorder,
        "log",
        lambda self, step, m: (seen.append((step, m.get("lr"))), real_on(self, step, m))[1],
    )
    params = stage(
        tmp_path / "ck", train={"learning_rate": 0.01, "max_steps": 4, "warmup_steps": 2, "lr_scheduler": "linear"}
    )
    _lm(nano_model(), shards, params)
    lrs = [lr for _, lr in seen if lr is not None]
    assert lrs == pytest.approx([0.0, 0.005, 0.01, 0.005])  # linear warm-up over 2 steps, then linear decay


def test_freeze_and_unfreeze_patterns(tmp_path, shards):
    model = nano_model()
    before = copy.deepcopy(model)
    params = stage(
        tmp_path / "ck",
        freeze=["model.layers.*", "model.embed_tokens.*"],
        unfreeze=["re:model\\.layers\\.1\\.mlp\\..*"],
    )
    trained, _ = _lm(model, shards, params)
    changed = _changed(before, trained)
    assert not any(v for k, v in changed.items() if k.startswith("model.layers.0."))
    assert not changed["model.embed_tokens.weight"]
    assert all(v for k, v in changed.items() if k.startswith("model.layers.1.mlp."))
    assert not changed["model.layers.1.self_attn.q_proj.weight"]
    assert changed["model.norm.weight"]


def test_a_pattern_matching_nothing_is_an_error(tmp_path, shards):
    with pytest.raises(ValueError, match="matches no parameter"):
        _lm(nano_model(), shards, stage(tmp_path / "ck", freeze=["model.layrs.*"]))


def test_lora_is_trained_and_merged(tmp_path, shards):
    model = nano_model()
    before = copy.deepcopy(model)
    params = stage(
        tmp_path / "ck",
        lora={"enabled": True, "r": 4, "alpha": 8, "train_lora_only": True, "target_modules": ["q_proj", "v_proj"]},
        train={"learning_rate": 0.01},
    )
    trained, summary, adapter_out = nodes.train_causal_lm(
        model, None, *shards, PackedMixes(tmp_path / "no-mixes"), params, stage="s", with_adapter=True
    )
    assert type(trained) is XoronForCausalLM  # merged back into a plain model
    changed = _changed(before, trained)
    assert changed["model.layers.0.self_attn.q_proj.weight"] and changed["model.layers.1.self_attn.v_proj.weight"]
    assert not changed["model.layers.0.self_attn.k_proj.weight"]
    assert not changed["model.embed_tokens.weight"]  # train_lora_only: base weights frozen
    assert summary["trainable_params"] < summary["total_params"] / 5
    # the adapter is kept in peft's format: base weights + adapter == the merged stage model
    from peft import PeftModel

    from xoron_pipelines.datasets.training_store import LoraAdapterDataset

    assert summary["lora_adapter"] == "s.lora_adapter"  # the node's output names where it is
    LoraAdapterDataset(str(tmp_path / "adapter")).save(adapter_out)
    adapter = LoraAdapterDataset(str(tmp_path / "adapter")).load().path
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(before, str(adapter)).eval()
    ids = torch.randint(0, trained.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, trained.eval()(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )


def test_seed_decides_the_result(tmp_path, shards):
    def run(seed, where):
        torch.manual_seed(0)
        model = XoronForCausalLM(nano_model().config)
        return _lm(model, shards, stage(tmp_path / where, train={"seed": seed}))[0].state_dict()

    a, b, c = run(1, "a"), run(1, "b"), run(2, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_disabled_stage_passes_its_model_through(tmp_path, shards):
    model = nano_model()
    out, summary = _lm(model, shards, stage(tmp_path / "ck", enabled=False))
    assert out is model and summary["enabled"] is False and summary["steps"] == 0


def test_rerun_resumes_from_the_finished_checkpoint_and_a_change_restarts(tmp_path, shards):
    params = stage(tmp_path / "ck")
    first, s1 = _lm(nano_model(), shards, params)
    again, s2 = _lm(nano_model(), shards, params)
    assert s1["resumed_from"] is None and s2["resumed_from"] is not None
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    _, s3 = _lm(nano_model(), shards, stage(tmp_path / "ck", train={"learning_rate": 2e-3}))
    assert s3["resumed_from"] is None and s3["fingerprint"] != s1["fingerprint"]


def test_precision_and_gradient_checkpointing(tmp_path, shards):
    model = nano_model()
    dtypes = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    params = stage(tmp_path / "ck", train={"precision": "bf16", "gradient_checkpointing": True, "max_steps": 1})
    _lm(model, shards, params)
    assert torch.bfloat16 in dtypes
    assert model.model.gradient_checkpointing is True


def test_unigram_entropy_counts_real_tokens_only(tmp_path):
    src = packed_source(packed_shards(tmp_path / "u", rows=8).path, 4, 0)
    ids = src.ids[:, :28].reshape(-1)
    p = torch.bincount(ids.long()).double()
    p = p[p > 0] / p.sum()
    assert unigram_entropy(src) == pytest.approx(float(-(p * p.log()).sum()))


# ------------------------------------------------------------------------------ sft / dpo
def test_sft_loss_weights_and_assistant_only_labels(tmp_path):
    tok = chat_tokenizer()
    synth = {"chat": lambda: chat_rows(20)}
    base = stage(tmp_path / "ck", sources=["chat"], max_seq_len=64, train={"max_steps": 1, "max_grad_norm": None})
    heavy = {**base, "checkpoint_dir": str(tmp_path / "ck2"), "loss_weights": {"tool_loss_weight": 3.0}}
    _, plain = nodes.train_sft(nano_model(vocab_size=len(tok)), tok, synth, base, stage="t")
    _, weighted = nodes.train_sft(nano_model(vocab_size=len(tok)), tok, synth, heavy, stage="t")
    assert plain["train_examples"] == 16 and plain["val_examples"] == 4
    assert weighted["train_loss"] != pytest.approx(plain["train_loss"])  # tool tokens weigh 3x


def test_dpo_beta_scales_the_first_gradient(tmp_path):
    tok = chat_tokenizer()
    synth = {"preference": lambda: preference_rows(12)}
    norms = {}
    for beta in (0.1, 1.0):
        params = stage(
            tmp_path / f"ck{beta}",
            sources=["preference"],
            beta=beta,
            max_seq_len=64,
            train={"max_steps": 1, "max_grad_norm": None, "batch_size": 4},
        )
        _, summary = nodes.train_dpo(nano_model(vocab_size=len(tok)), tok, synth, params, stage="p")
        assert summary["train_loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1
        norms[beta] = summary["grad_norm"]
    assert norms[1.0] / norms[0.1] == pytest.approx(10.0, rel=1e-3)


def test_kind_specific_knobs_are_rejected_elsewhere(tmp_path, shards):
    with pytest.raises(ValueError, match="beta"):
        _lm(nano_model(), shards, stage(tmp_path / "ck", beta=0.1))
    with pytest.raises(ValueError, match="needs beta"):
        nodes.train_dpo(nano_model(), chat_tokenizer(), {}, stage(tmp_path / "ck", sources=["preference"]), stage="p")


def test_compile_flag_reaches_the_engine(tmp_path, shards, monkeypatch):
    from xoron_pipelines.training import engine

    calls = []
    monkeypatch.setattr(engine.torch, "compile", lambda model, **kw: calls.append(kw) or model)
    _lm(
        nano_model(),
        shards,
        stage(tmp_path / "ck", train={"compile": True, "compile_backend": "eager", "max_steps": 1}),
    )
    assert calls == [{"backend": "eager"}]


def test_data_mix_trains_and_validates_on_the_named_stage_mix(tmp_path, shards):
    root = tmp_path / "mixes"
    mix_train = packed_shards(root / "code" / "train", rows=24, seed=7)
    mix_val = packed_shards(root / "code" / "val", rows=8, seed=8)
    mixes = PackedMixes(root)
    model, summary = _lm(nano_model(), shards, stage(tmp_path / "ck", data_mix="code"), mixes)
    assert summary["data_mix"] == "code" and summary["train_rows"] == 24  # the mix's rows, not the 40 main ones
    assert summary["unigram_entropy"] == pytest.approx(unigram_entropy(packed_source(mix_train.path, 4, 0)))
    held_out = nodes.stage_data.lm_eval_fn(packed_source(mix_val.path, 4, 0, shuffle=False), 2)(model.eval())
    assert summary["eval_loss"] == pytest.approx(held_out["eval_loss"], rel=1e-6)  # validated on the mix's val
    _, default = _lm(nano_model(), shards, stage(tmp_path / "ck-main"), mixes)
    assert default["data_mix"] is None and default["train_rows"] == 40
    with pytest.raises(ValueError, match="data_mix 'prose'.*stage_mixes"):
        _lm(nano_model(), shards, stage(tmp_path / "ck-bad", data_mix="prose"), mixes)
