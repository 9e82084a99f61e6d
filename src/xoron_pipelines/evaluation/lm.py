"""Model-facing primitives shared by every evaluation: token NLL of sequences, log-likelihood of
a continuation given a context (lm-evaluation-harness ``loglikelihood``), batched generation.

All functions take any causal LM whose ``forward(input_ids, attention_mask)`` returns an object
with ``.logits`` (B, T, V); they run under ``torch.no_grad`` in the model's current mode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _right_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def token_logprobs(model, seqs: Sequence[Sequence[int]], pad_id: int = 0) -> list[torch.Tensor]:
    """Per sequence ``s`` (len L >= 2): log p(s[t] | s[:t]) for t = 1..L-1, as a float64 tensor
    of length L-1 (padding never leaks: each sequence is right-padded and masked). The model
    reads ``s[:-1]`` (L-1 positions: the last token is only a target)."""
    ids, mask = _right_pad(seqs, pad_id, model_device(model))
    logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits.float()
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, ids[:, 1:, None])[..., 0].double().cpu()
    return [picked[i, : len(s) - 1] for i, s in enumerate(seqs)]


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Token ids of a context and of its continuation (encoded as in the harness)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def encode_pair(tokenizer, context: str, continuation: str, bos_id: int | None) -> LoglikelihoodRequest:
    """lm-evaluation-harness ``_encode_pair``: trailing spaces of the context move to the
    continuation; the continuation's ids are those of ``context + continuation`` after the
    context's ids (so merges across the boundary are tokenized as in the whole string). A
    ``bos_id`` is put in front; with an empty context and no bos the first continuation token
    cannot be scored, so ``bos_id`` is then required."""
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False) if context else []
    cont = whole[len(ctx) :]
    prefix = [bos_id] if bos_id is not None else []
    if not prefix and not ctx:
        raise ValueError("an empty context needs a bos token to score the continuation")
    return LoglikelihoodRequest(tuple(prefix + ctx), tuple(cont))


@torch.no_grad()
def loglikelihoods(
    model,
    requests: Sequence[LoglikelihoodRequest],
    batch_size: int,
    max_length: int,
    pad_id: int = 0,
    progress: bool = False,
) -> list[tuple[float, bool]]:
    """Per request: (sum of log p(continuation | context), whether greedy decoding would produce
    exactly the continuation). As in the harness, the model reads the last ``max_length`` tokens
    of ``context + continuation`` minus its final token (whose prediction is not needed)."""
    out: list[tuple[float, bool]] = []
    for batch in tqdm(list(batched(requests, batch_size)), desc="loglikelihood", disable=not progress):
        seqs = [(r.context + r.continuation)[-(max_length + 1) :] for r in batch]
        longest = max(len(r.continuation) for r in batch)
        if longest > max_length:  # the harness asserts the same
            raise ValueError(f"a continuation of {longest} tokens does not fit the model's {max_length} positions")
        ids, mask = _right_pad([s[:-1] for s in seqs], pad_id, model_device(model))
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = F.log_softmax(logits, dim=-1)
        for i, (req, seq) in enumerate(zip(batch, seqs)):
            n = len(req.continuation)
            pos = torch.arange(len(seq) - 1 - n, len(seq) - 1, device=logp.device)
            target = torch.as_tensor(seq[-n:], device=logp.device)
            rows = logp[i, pos]
            ll = float(rows.gather(-1, target[:, None]).double().sum())
            greedy = bool((rows.argmax(-1) == target).all())
            out.append((ll, greedy))
    return out


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int = 0,
    add_bos: bool = True,
    max_length: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Decode one continuation per prompt (greedy when ``temperature`` is 0, else sampled with a
    seeded generator); returns only the new text up to the first eos, special tokens kept (so
    callers can cut at a closing chat tag and strip hidden blocks themselves). Prompts keep their
    last ``max_length - max_new_tokens`` tokens (``max_length`` defaults to the model's
    ``max_position_embeddings``), so prompt plus generation fit the model's positions."""
    max_length = max_length or int(model.config.max_position_embeddings)
    keep = max_length - max_new_tokens
    if keep < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {max_length} positions")
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    texts: list[str] = []
    for b, batch in enumerate(tqdm(list(batched(prompts, batch_size)), desc="generate", disable=not progress)):
        encoded = [bos + tokenizer.encode(p, add_special_tokens=False) for p in batch]
        if any(len(e) > keep for e in encoded):
            log.warning(
                "%d prompt(s) longer than %d tokens keep only their last %d (max_length %d - max_new_tokens %d)",
                sum(len(e) > keep for e in encoded),
                keep,
                keep,
                max_length,
                max_new_tokens,
            )
            encoded = [e[-keep:] for e in encoded]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):  # left padding: generate() continues from the last column
            ids[i, width - len(e) :] = torch.as_tensor(e)
            mask[i, width - len(e) :] = 1
        tokens = model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=top_p,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
            seed=seed + b,
        )
        for row in tokens[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            texts.append(tokenizer.decode(row, skip_special_tokens=False))
    return texts
