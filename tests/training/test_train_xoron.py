"""The engine on the real Xoron model (tiny MoE + MLA, tied embeddings): MoE bias updates,
gradient checkpointing, and exact resume through safetensors checkpoints."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines import model as model_lib
from xoron_pipelines.training import TensorBatchSource, TrainConfig, train

ROWS = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(0))


def _model():
    cfg = model_lib.get_config(
        "nano-moe-mla",
        num_layers=2,
        hidden_size=64,
        vocab_size=64,
        num_heads=2,
        intermediate_size=64,
        kv_lora_rank=16,
        q_lora_rank=32,
        max_position_embeddings=64,
        dropout=0.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return model_lib.XoronForCausalLM(cfg)


def _cfg(**kw):
    return TrainConfig(
        **{
            **dict(
                max_steps=4,
                batch_size=2,
                gradient_accumulation_steps=2,
                learning_rate=1e-2,
                save_steps=2,
                deterministic=True,
                seed=1,
                logging_steps=1,
            ),
            **kw,
        }
    )


def _train(model, ckpt_dir, cfg=None, **kw):
    return train(
        model, TensorBatchSource(ROWS, batch_size=2, seed=0), cfg or _cfg(), ckpt_dir=ckpt_dir, progress=False, **kw
    )


def test_xoron_resume_is_exact_and_moe_bias_moves(tmp_path):
    reference = _model()
    _train(reference, tmp_path / "ref")
    bias = "model.layers.1.mlp.gate.e_score_correction_bias"
    assert reference.state_dict()[bias].abs().sum() > 0  # update_moe_bias ran after the steps

    def crash(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(_model(), tmp_path / "run", on_log=crash)
    resumed = _model()
    result = _train(resumed, tmp_path / "run")
    assert result.resumed_from == tmp_path / "run" / "checkpoint-2"
    ref_sd, res_sd = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_sd[k], res_sd[k]) for k in ref_sd)
    assert resumed.lm_head.weight.data_ptr() == resumed.model.embed_tokens.weight.data_ptr()  # still tied


def test_xoron_gradient_checkpointing_recomputes_and_matches(tmp_path):
    weights, calls = {}, {}
    for gc in (False, True):
        model = _model()
        count = [0]
        model.model.layers[0].self_attn.register_forward_hook(
            lambda *a, count=count: count.__setitem__(0, count[0] + 1)
        )
        _train(model, tmp_path / str(gc), _cfg(max_steps=1, gradient_checkpointing=gc))
        weights[gc], calls[gc] = model.state_dict(), count[0]
    assert calls == {False: 2, True: 4}  # 2 micro-batches; checkpointing runs each forward again in backward
    for k in weights[False]:
        torch.testing.assert_close(weights[True][k], weights[False][k], rtol=1e-5, atol=1e-6)
