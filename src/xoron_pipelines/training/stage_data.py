"""Batch sources and evaluation functions of the three stage kinds (prepared by the Kedro stage nodes).

* ``causal_lm``: packed Parquet shards (``packed_train`` / ``packed_val``) through
  :class:`~xoron_pipelines.training.data.ParquetBatchSource`; eval = mean next-token loss per
  real token on the validation shards.
  Or seed 001's ``.npy`` token files (``token_files``: :mod:`xoron_pipelines.training.token_files`).
* ``sft``: conversations (synth partitions and / or user datasets:
  :mod:`xoron_pipelines.training.user_data`) rendered with the tokenizer's chat template, labels
  on assistant tokens only, seed 000 block weights (:mod:`xoron_pipelines.training.sft`); eval =
  the same :func:`lm_eval_fn`: plain (unweighted) loss on the assistant tokens of held-out
  conversations.
* ``dpo``: ``{prompt, chosen, rejected}`` pairs of the same kinds of sources
  (:mod:`xoron_pipelines.training.dpo`); eval = DPO loss and reward accuracy on held-out pairs
  against the same frozen reference.

``max_samples`` keeps the first ``max_samples`` rows / examples of a seeded permutation, so a
cap draws from the whole data, the same rows for the same seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from xoron_pipelines.training.data import IGNORE_INDEX, ParquetBatchSource, TokenRowsSource
from xoron_pipelines.training.dpo import dpo_step_loss, pair_logps, preference_counts
from xoron_pipelines.training.sft import ExampleBatchSource, collate
from xoron_pipelines.training.user_data import ChatData, oversample

log = logging.getLogger(__name__)


def _subset(n: int, max_samples: int | None, seed: int) -> np.ndarray:
    """Indices of the rows kept: all, or the first ``max_samples`` of a seeded permutation (sorted)."""
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 7]).permutation(n)[:max_samples])


# ------------------------------------------------------------------------------ causal_lm
def packed_source(
    path, batch_size: int, seed: int, max_samples: int | None = None, shuffle: bool = True, shrink_batch: bool = False
) -> TokenRowsSource:
    """Micro-batches over packed shards, optionally capped to ``max_samples`` rows (``shrink_batch``:
    see :class:`~xoron_pipelines.training.data.ParquetBatchSource`)."""
    source = ParquetBatchSource(path, batch_size=batch_size, seed=seed, shuffle=shuffle, shrink_batch=shrink_batch)
    if max_samples is None or max_samples >= source.num_rows:
        return source
    rows = torch.from_numpy(_subset(source.num_rows, max_samples, seed))
    lengths = None if source.lengths is None else source.lengths[rows]
    weights = None if source.loss_weights is None else source.loss_weights[rows]
    return TokenRowsSource(source.ids[rows], batch_size, seed, shuffle, lengths=lengths, loss_weights=weights)


def check_tokenizer_matches(stage: str, tokenizer, shards: Mapping[str, Any], sources: Mapping[str, Any]) -> None:
    """Refuse packed data that was not made with ``tokenizer``, before any step.

    ``shards`` are the split's :class:`ShardSet` handles (``{"train": ..., "val": ...}``) and
    ``sources`` their batch sources (the ids in memory). Two conditions: the tokenizer and every
    shard set carry the same data generation (``_generation.json``, written by one
    ``data_processing`` run; data without markers, from before generations, is checked by ids
    only), and the tokenizer covers every packed id (``len(tokenizer) > max id``). A mismatch is a
    :class:`~xoron_pipelines.datasets.generation.GenerationMismatchError` (a ``ValueError``) naming
    both paths and generations."""
    from xoron_pipelines.datasets.generation import GenerationMismatchError, generation_of

    tok_path, tok_gen = getattr(tokenizer, "name_or_path", "?"), generation_of(tokenizer)
    rerun = "run data_processing again (kedro run --pipeline data_processing) so they are made together"
    for split, shard_set in shards.items():
        gen = shard_set.generation
        if gen != tok_gen:
            raise GenerationMismatchError(
                f"stage {stage}: the tokenizer {tok_path} (generation {tok_gen}) and the packed "
                f"{split} data {shard_set.path} (generation {gen}) come from different "
                f"data_processing runs; {rerun}"
            )
        max_id = int(sources[split].ids.max()) if sources[split].ids.numel() else -1
        if max_id >= len(tokenizer):
            raise GenerationMismatchError(
                f"stage {stage}: the packed {split} data {shard_set.path} (generation {gen}) holds "
                f"token id {max_id} but the tokenizer {tok_path} (generation {tok_gen}) has only "
                f"{len(tokenizer)} ids; {rerun}"
            )
    if tok_gen is None:
        log.warning(
            "stage %s: the tokenizer %s and the packed data carry no generation marker (written before "
            "generations existed): checked by token ids only",
            stage,
            tok_path,
        )


def lm_eval_fn(source, max_batches: int | None) -> Callable[[nn.Module], dict[str, float]]:
    """``eval_fn(model) -> {"eval_loss", "eval_perplexity"}``: mean next-token loss per target
    token (``labels != -100``: real tokens of packed rows, assistant tokens of chat examples;
    unweighted, the model's auxiliary MoE loss excluded) over the first ``max_batches`` batches.
    A ``partial`` of a module-level function, so it can be sent to distributed workers."""
    batches = len(source) if max_batches is None else min(max_batches, len(source))
    return partial(_lm_evaluate, source, batches)


def _lm_evaluate(source, batches: int, model: nn.Module) -> dict[str, float]:
    total, weight = 0.0, 0.0
    device = next(model.parameters()).device
    for index in range(batches):
        batch = {k: v.to(device) for k, v in source.batch(0, index).items() if k != "loss_weights"}
        out = model(**batch)
        n = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        aux = out.aux_loss if isinstance(getattr(out, "aux_loss", None), torch.Tensor) else 0.0
        total += float(out.loss - aux) * n
        weight += n
    loss = total / max(weight, 1.0)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}


def unigram_entropy(source: TokenRowsSource) -> float:
    """Entropy (nats) of the token frequencies of the real (non-padding) tokens: the loss of the
    best model that ignores context, the baseline a trained LM must beat."""
    ids = source.ids
    if source.lengths is not None:
        mask = torch.arange(ids.shape[1])[None, :] < source.lengths[:, None]
        ids = ids[mask]
    counts = torch.bincount(ids.reshape(-1).to(torch.int64)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


# ------------------------------------------------------------------------------ chat kinds
def split_examples(examples: list, val_fraction: float, max_samples: int | None, seed: int) -> tuple[list, list]:
    """(train, val): a seeded permutation, the first ``ceil(val_fraction * n)`` (>= 1) held out,
    the training part capped to ``max_samples``."""
    if len(examples) < 2:
        raise ValueError(f"need at least 2 examples to hold one out, got {len(examples)}")
    order = np.random.default_rng([seed, 11]).permutation(len(examples))
    n_val = min(max(1, math.ceil(val_fraction * len(examples))), len(examples) - 1)
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    if max_samples is not None:
        train = train[:max_samples]
    return train, val


def chat_split(data: ChatData, sources: list, val_fraction: float, max_samples: int | None, seed: int):
    """(train, val) examples of a chat stage's data: :func:`split_examples` of all examples, then
    each user source's ``weight`` applied to the training part (:func:`~.user_data.oversample`;
    held-out examples are never repeated)."""
    train, val = split_examples(list(range(len(data.examples))), val_fraction, max_samples, seed)
    weights = [1.0 if isinstance(s, str) else s.weight for s in sources]
    if any(w != 1.0 for w in weights):
        train = oversample(train, data.source_of, weights, seed)
        if not train:
            raise ValueError("the sources' weights leave no training example")
    return [data.examples[i] for i in train], [data.examples[i] for i in val]


def example_source(examples: list, batch_size: int, pad_id: int, seed: int, shuffle: bool = True) -> ExampleBatchSource:
    return ExampleBatchSource(examples, batch_size, partial(collate, pad_token_id=pad_id), seed=seed, shuffle=shuffle)


def dpo_eval_fn(
    source: ExampleBatchSource, reference: nn.Module, beta: float, max_batches: int | None
) -> Callable[[nn.Module], dict[str, float]]:
    """Mean DPO loss and implicit-reward metrics over held-out pairs, and the held-out preference
    accuracy over every held-out pair (:func:`~xoron_pipelines.training.dpo.preference_counts`,
    keys ``eval_pref_*``: implicit reward of the policy, log-prob margin of the policy alone and of
    the reference alone, with ``eval_pref_n`` pairs; unlike the batch means, no pair of an
    incomplete last batch is left out) -- a picklable ``partial``."""
    batches = len(source) if max_batches is None else min(max_batches, len(source))
    return partial(_dpo_evaluate, source, reference, beta, batches)


def _dpo_evaluate(
    source: ExampleBatchSource, reference: nn.Module, beta: float, batches: int, model: nn.Module
) -> dict[str, float]:
    sums: dict[str, float] = {}
    device = next(model.parameters()).device
    for index in range(batches):
        batch = {k: v.to(device) for k, v in source.batch(0, index).items()}
        loss, metrics = dpo_step_loss(model, reference, batch, beta)
        for key, value in {"loss": float(loss), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value
    out = {k.replace("rewards/", "reward_"): v / batches for k, v in sums.items()}
    pad = source.collate_fn.keywords["pad_token_id"]
    pairs = [pair_logps(m, source.examples, source.batch_size, pad) for m in (model, reference)]
    counts = preference_counts(*pairs, beta)
    return {
        "eval_loss": out.pop("loss"),
        **{f"eval_{k}": v for k, v in out.items()},
        **{f"eval_pref_{k}": v for k, v in counts.items()},
    }
