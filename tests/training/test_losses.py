"""Seed 000's loss weights: block-weighted tokens (hand-computed) and modality weights."""

from __future__ import annotations

import math

import pytest
import torch

from tests.training.finetune_helpers import chat_tokenizer
from xoron_pipelines.tokens import block
from xoron_pipelines.training.losses import BlockWeighter, LossWeights, block_loss_weights

# token ids of a synthetic vocabulary: cot 10/11, tool 20/21 and 22/23, anti-hallucination 30/31, code 40/41
PAIRS = {"cot": [(10, 11)], "tool": [(20, 21), (22, 23)], "anti_hallucination": [(30, 31)], "code_exec": [(40, 41)]}

#          plain  <cot   x     <tool  x     tool>  x     cot>  plain <anti  x    <tool  x    tool>  x    anti>
ROW = [1, 10, 2, 20, 3, 21, 4, 11, 5, 30, 6, 22, 7, 23, 8, 31, 9, 11, 9, 40, 5]
#      plain, stray cot>, plain, <code (never closed), x
EXPECTED = [1.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.0, 1.2, 1.2, 1.3, 1.3, 1.3, 1.2, 1.2, 1.0, 1.0, 1.0, 1.2, 1.2]


def test_block_weights_hand_computed_with_nesting_stray_close_and_open_end():
    weighter = BlockWeighter(PAIRS, LossWeights().block_weights())
    got = weighter(torch.tensor(ROW))
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(EXPECTED)


def test_block_weights_are_vectorised_over_the_batch():
    other = [10, 40, 1, 41, 11, 2, 2, 2, 30, 3, 31, 4, 20, 1, 1, 1, 21, 5, 5, 5, 5]
    # tool/code inside cot take cot's 1.5 (the highest); 1.2 in the anti block, 1.3 in the tool block
    other_expected = [1.5] * 5 + [1.0] * 3 + [1.2] * 3 + [1.0] + [1.3] * 5 + [1.0] * 4
    weighter = BlockWeighter(PAIRS, LossWeights().block_weights())
    got = weighter(torch.tensor([ROW, other]))
    assert got.shape == (2, len(ROW))
    assert got[0].tolist() == pytest.approx(EXPECTED)
    assert got[1].tolist() == pytest.approx(other_expected)


def test_configured_weights_take_effect_and_max_wins():
    weights = LossWeights(cot_loss_weight=1.1, tool_loss_weight=2.0, default_loss_weight=0.5)
    got = BlockWeighter(PAIRS, weights.block_weights(), weights.default_loss_weight)(torch.tensor(ROW))
    # the tool block inside the cot block now outweighs it; plain tokens get the default 0.5
    assert got[:9].tolist() == pytest.approx([0.5, 1.1, 1.1, 2.0, 2.0, 2.0, 1.1, 1.1, 0.5])


def test_weights_below_default_apply_inside_their_block():
    groups = [(torch.tensor([10]), torch.tensor([11]), 0.25)]
    got = block_loss_weights(torch.tensor([1, 10, 2, 11, 3]), groups, default=1.0)
    assert got.tolist() == [1.0, 0.25, 0.25, 0.25, 1.0]


def test_weighter_from_tokenizer_uses_the_registry_block_tokens():
    tok = chat_tokenizer()
    think_open, think_close = block("think")
    idk_open, idk_close = block("idk")
    text = f"a{think_open}b{idk_open}c{idk_close}{think_close}d{idk_open}e{idk_close}"
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    got = BlockWeighter.from_tokenizer(tok, LossWeights())(ids)
    tokens = tok.convert_ids_to_tokens(ids.tolist())
    assert tokens == ["a", think_open, "b", idk_open, "c", idk_close, think_close, "d", idk_open, "e", idk_close]
    assert got.tolist() == pytest.approx([1.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.0, 1.2, 1.2, 1.2])


def test_modality_combine_applies_the_weights():
    losses = {"llm": torch.tensor(2.0), "asr": torch.tensor(3.0), "image_diffusion": torch.tensor(5.0)}
    assert float(LossWeights().combine(losses)) == pytest.approx(2.0 + 0.3 + 0.5)
    custom = LossWeights(llm_loss_weight=0.5, tts_loss_weight=2.0)
    assert float(custom.combine({"llm": torch.tensor(2.0), "tts": torch.tensor(1.5)})) == pytest.approx(4.0)


def test_combine_keeps_the_graph_and_rejects_unknown_names():
    x = torch.tensor(3.0, requires_grad=True)
    LossWeights().combine({"video_diffusion": x * x}).backward()
    assert math.isclose(float(x.grad), 0.1 * 6.0, rel_tol=1e-6)
    with pytest.raises(KeyError, match="vision"):
        LossWeights().combine({"vision": torch.tensor(1.0)})


def test_loss_weights_validation():
    with pytest.raises(ValueError):
        LossWeights(cot_loss_weight=-1.0)
    with pytest.raises(ValueError):
        LossWeights.model_validate({"cot_weight": 1.0})
    assert LossWeights().block_weights() == {"cot": 1.5, "tool": 1.3, "anti_hallucination": 1.2, "code_exec": 1.2}
