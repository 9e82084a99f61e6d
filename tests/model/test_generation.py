"""Generation: cached decoding == uncached forward, greedy == argmax loop, sampling filters, EOS."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines.model import XoronForCausalLM, get_config
from xoron_pipelines.model.generation import next_tokens, top_k_filter, top_p_filter


def _model(name, **overrides):
    torch.manual_seed(0)
    return XoronForCausalLM(get_config(name, **overrides)).eval()


def _prompt(batch=2, length=9, seed=1):
    return torch.randint(0, 8000, (batch, length), generator=torch.Generator().manual_seed(seed))


# mha, learned positions, gqa+window+chunked+MoE, mla+chunked+yarn+MoE (latent cache), PEER, mla unchunked
CASES = [
    ("nano", {}),
    ("nano-learned", {}),
    ("nano-gqa-moe", {}),
    ("nano-moe-mla", {}),
    ("nano-peer", {}),
    ("nano-moe-mla", {"attention_chunk_size": None}),
]


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_cached_logits_equal_uncached(name, overrides):
    model = _model(name, **overrides)
    ids = _prompt(length=20)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        out = model(ids[:, :12], attention_mask=mask[:, :12], use_cache=True)
        steps = [out.logits]
        for t in range(12, 20):  # one token at a time through the cache
            out = model(
                ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=out.past_key_values, use_cache=True
            )
            steps.append(out.logits)
    cached = torch.cat(steps, dim=1)
    keep = mask.bool()
    torch.testing.assert_close(cached[keep], full[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["nano", "nano-moe-mla"])
def test_greedy_equals_uncached_argmax_loop(name):
    model = _model(name)
    ids = _prompt(batch=1)
    got = model.generate(ids, max_new_tokens=6)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, seq)


def test_batched_left_padded_equals_single_rows():
    model = _model("nano-gqa-moe")
    short, long = _prompt(batch=1, length=5, seed=3), _prompt(batch=1, length=9, seed=4)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=5)
    assert torch.equal(out[0, 4:], model.generate(short, max_new_tokens=5)[0])
    assert torch.equal(out[1], model.generate(long, max_new_tokens=5)[0])


def test_top_k_and_top_p_filters_on_known_distribution():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    kept = lambda filtered: torch.isfinite(filtered)[0].tolist()  # noqa: E731
    assert kept(top_k_filter(logits, 2)) == [False, True, False, True]
    assert kept(top_k_filter(logits, 1)) == [False, True, False, False]
    assert kept(top_p_filter(logits, 0.5)) == [False, True, False, False]  # 0.5 reaches p
    assert kept(top_p_filter(logits, 0.7)) == [False, True, False, True]  # 0.5 + 0.3
    assert kept(top_p_filter(logits, 0.81)) == [False, True, True, True]
    assert kept(top_p_filter(logits, 0.01)) == [False, True, False, False]  # never empty
    assert kept(top_p_filter(logits, 1.0)) == [True] * 4


def test_sampling_respects_filters_temperature_and_seed():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]]).expand(2000, -1)
    g = torch.Generator().manual_seed(0)
    drawn = next_tokens(logits, True, 1.0, 3, None, g)
    assert set(drawn.tolist()) == {1, 2, 3}  # exactly the top 3
    counts = torch.bincount(drawn, minlength=5).float() / 2000
    expected = torch.tensor([0.0, 3.0, 1.0, 2.0]).exp()[1:4] / torch.tensor([3.0, 1.0, 2.0]).exp().sum()
    torch.testing.assert_close(counts[1:4], expected, atol=0.04, rtol=0)
    cold = next_tokens(logits, True, 0.05, None, None, torch.Generator().manual_seed(0))
    assert float((cold == 1).float().mean()) > 0.99  # low temperature -> almost greedy
    with pytest.raises(ValueError, match="temperature"):
        next_tokens(logits, True, 0.0, None, None, None)


def test_seeded_generation_is_deterministic():
    model = _model("nano")
    ids = _prompt(batch=2)
    kwargs = dict(max_new_tokens=5, do_sample=True, temperature=1.5, top_p=0.95)
    a = model.generate(ids, seed=7, **kwargs)
    assert torch.equal(a, model.generate(ids, seed=7, **kwargs))
    assert not torch.equal(a, model.generate(ids, seed=8, **kwargs))
    assert torch.equal(
        model.generate(ids, do_sample=True, top_k=1, max_new_tokens=5, seed=3), model.generate(ids, max_new_tokens=5)
    )


def test_eos_stops_and_pads():
    model = _model("nano")
    ids = _prompt(batch=2)
    free = model.generate(ids, max_new_tokens=6)
    eos = int(free[0, ids.shape[1] + 1])  # row 0's second new token
    out = model.generate(ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)
    row0 = out[0, ids.shape[1] :].tolist()
    stop = row0.index(eos)
    assert stop <= 1 and all(t == 0 for t in row0[stop + 1 :])
    # every row finished -> decoding ends before max_new_tokens
    both = model.generate(ids, max_new_tokens=6, eos_token_id=[int(free[0, 9]), int(free[1, 9])])
    assert both.shape[1] == ids.shape[1] + 1


def test_max_new_tokens_and_right_padding_rejected():
    model = _model("nano")
    ids = _prompt(batch=1)
    assert model.generate(ids, max_new_tokens=3).shape == (1, ids.shape[1] + 3)
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    with pytest.raises(ValueError, match="left padding"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2)


def test_defaults_come_from_the_generation_config():
    """Unset stop ids / max_new_tokens: a passed generation_config's (as pipeline() passes one),
    else the model's generation_config's (an export's generation_config.json), else 32 new tokens."""
    from transformers import GenerationConfig

    model = _model("nano", num_layers=1)
    ids = _prompt(batch=1)
    free = model.generate(ids, max_new_tokens=6, eos_token_id=-1)
    assert free.shape[1] == ids.shape[1] + 6
    assert model.generate(ids, eos_token_id=-1).shape[1] == ids.shape[1] + 32
    stop = int(free[0, ids.shape[1] + 2])  # the third new token (or an earlier one equal to it)
    end = free[0].tolist().index(stop, ids.shape[1]) + 1
    given = GenerationConfig(eos_token_id=[-5, stop], max_new_tokens=5)
    assert model.generate(ids, generation_config=given)[0].tolist() == free[0, :end].tolist()
    model.generation_config = GenerationConfig(eos_token_id=-5, max_new_tokens=4)
    assert model.generate(ids).shape[1] == ids.shape[1] + 4
    assert model.generate(ids, max_new_tokens=2).shape[1] == ids.shape[1] + 2  # an argument wins
