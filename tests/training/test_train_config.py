"""TrainConfig validation: exclusive fields, seed-document aliases, derived step counts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from xoron_pipelines.training import TrainConfig


def test_warmup_steps_and_ratio_are_exclusive():
    with pytest.raises(ValidationError, match="warmup_steps or warmup_ratio"):
        TrainConfig(max_steps=10, warmup_steps=2, warmup_ratio=0.1)


def test_exactly_one_duration():
    with pytest.raises(ValidationError, match="exactly one of max_steps and num_epochs"):
        TrainConfig()
    with pytest.raises(ValidationError, match="exactly one of max_steps and num_epochs"):
        TrainConfig(max_steps=10, num_epochs=1)


@pytest.mark.parametrize(
    "bad",
    [
        {"learning_rate": 0},
        {"betas": (0.9, 1.0)},
        {"lr_scheduler": "step"},
        {"precision": "fp8"},
        {"warmup_ratio": 1.0},
        {"unknown_knob": 1},
        {"early_stopping_patience": 2},
        {"fp16": True, "bf16": True},
    ],
)
def test_impossible_values_fail(bad):
    with pytest.raises(ValidationError):
        TrainConfig(max_steps=10, **bad)


def test_total_steps_from_epochs():
    cfg = TrainConfig(num_epochs=2, gradient_accumulation_steps=4)
    assert cfg.total_steps(batches_per_epoch=18) == 9  # floor(2 * 18 / 4)
    assert TrainConfig(max_steps=7).total_steps(1000) == 7
    with pytest.raises(ValueError, match="no optimizer step"):
        TrainConfig(num_epochs=1, gradient_accumulation_steps=8).total_steps(3)


def test_seed_document_spellings():
    cfg = TrainConfig.model_validate(
        {
            "num_train_epochs": 3,
            "lr_scheduler_type": "linear",
            "grad_clip": 0.5,
            "save_every": 50,
            "use_compile": True,
            "torch_compile_mode": "reduce-overhead",
            "use_gradient_checkpointing": True,
            "bf16": True,
            "use_8bit_optimizer": True,
        }
    )
    assert (cfg.num_epochs, cfg.lr_scheduler, cfg.max_grad_norm, cfg.save_steps) == (3, "linear", 0.5, 50)
    assert (cfg.compile, cfg.compile_mode, cfg.gradient_checkpointing) == (True, "reduce-overhead", True)
    assert (cfg.precision, cfg.optimizer) == ("bf16", "adamw_8bit")
    assert TrainConfig(max_steps=1, fp16=True).precision == "fp16"
    assert TrainConfig(max_steps=1, fp16=False, bf16=False).precision == "fp32"
    # a dump validates back to the same config
    assert TrainConfig.model_validate(cfg.model_dump()) == cfg
