"""Autoregressive decoding with a KV cache (MLA's latent cache included).

One prefill forward over the (left-padded) prompt fills the cache; each further step feeds only
the newest token. Greedy (``do_sample=False``) takes the argmax; sampling divides by
``temperature``, keeps the ``top_k`` most likely tokens and the smallest set whose probability
reaches ``top_p`` (always at least one), and draws with a seeded generator. Finished sequences
(an ``eos_token_id`` produced) are padded with ``pad_token_id``; decoding stops when all finished
or after ``max_new_tokens``.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Set all but the ``k`` largest logits per row to -inf (no-op for None / k >= vocab)."""
    if k is None or k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keep the most likely tokens until their probability sum reaches ``p``."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_k, top_p, generator: torch.Generator | None
) -> torch.Tensor:
    """Choose one token per row of (B, V) logits."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 when do_sample=True")
    filtered = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
    return torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Return ``input_ids`` followed by up to ``max_new_tokens`` generated tokens (B, T + n)."""
    config = model.config
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = torch.tensor(
        [] if eos is None else ([eos] if isinstance(eos, int) else list(eos)), device=input_ids.device, dtype=torch.long
    )
    pad = pad_token_id if pad_token_id is not None else config.pad_token_id
    if pad is None:
        pad = int(eos_ids[0]) if len(eos_ids) else 0
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("generate() needs left padding: the last prompt position must be a real token in every row")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids, attention_mask=attention_mask, use_cache=True)
        cache, tokens = out.cache, input_ids
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in tqdm(range(max_new_tokens), desc="generate", disable=not progress):
            nxt = next_tokens(out.logits[:, -1], do_sample, temperature, top_k, top_p, generator)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=-1)
            finished |= torch.isin(nxt, eos_ids)
            if bool(finished.all()):
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(nxt[:, None])], dim=-1)
            out = model(nxt[:, None], attention_mask=attention_mask, past_key_values=cache, use_cache=True)
            cache = out.cache
        return tokens
    finally:
        model.train(was_training)
