"""Batched generation: left padding does not change what each prompt generates."""

from __future__ import annotations

from xoron_pipelines.evaluation.lm import generate_texts


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny_model, tiny_tokenizer):
    prompts = ["def f(x):\n", "Question: what is 3 plus 3? Answer:", "x"]
    kwargs = {"max_new_tokens": 6, "batch_size": 3}
    together = generate_texts(tiny_model, tiny_tokenizer, prompts, **kwargs)
    apart = [generate_texts(tiny_model, tiny_tokenizer, [p], **kwargs)[0] for p in prompts]
    assert together == apart and all(isinstance(t, str) for t in together)


def test_sampling_is_seeded(tiny_model, tiny_tokenizer):
    kwargs = {"max_new_tokens": 8, "batch_size": 2, "temperature": 1.0}
    a = generate_texts(tiny_model, tiny_tokenizer, ["def", "x"], seed=1, **kwargs)
    assert a == generate_texts(tiny_model, tiny_tokenizer, ["def", "x"], seed=1, **kwargs)
    assert a != generate_texts(tiny_model, tiny_tokenizer, ["def", "x"], seed=2, **kwargs)


def test_long_prompts_are_cut_to_fit_the_positions(tiny_tokenizer):
    import pytest
    import torch
    from eval_helpers import make_model

    model = make_model(len(tiny_tokenizer), preset="nano-learned", max_positions=32)  # learned positions
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model(torch.zeros((1, 33), dtype=torch.long))
    long_prompt = "def f(x): return x + 1\n" * 20
    out = generate_texts(model, tiny_tokenizer, [long_prompt], max_new_tokens=4, batch_size=1)
    assert len(out) == 1
