"""Direct Preference Optimisation (Rafailov et al. 2023) against a frozen reference model.

The reference is the stage's starting model (:func:`make_reference`: a frozen deep copy). For a
prompt x with a chosen answer y_w and a rejected one y_l, with ``logp`` the summed log-probability
of the answer's tokens::

    loss = -log sigmoid(beta * ((logp_pi(y_w) - logp_ref(y_w)) - (logp_pi(y_l) - logp_ref(y_l))))

averaged over the batch. ``beta * (logp_pi - logp_ref)`` is the implicit reward of an answer.

Preference examples are rendered with the chat template (:func:`build_preference_example`: the
prompt as a user turn, each answer as the assistant turn, labels on the answer tokens only, as in
SFT); :func:`~xoron_pipelines.training.sft.collate` pads a list of them into a batch with keys
``chosen_input_ids / chosen_labels / chosen_attention_mask`` and the same for ``rejected_``.
:func:`make_dpo_loss_fn` gives the ``loss_fn(model, batch)`` that
:func:`xoron_pipelines.training.train` calls.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xoron_pipelines.training.data import IGNORE_INDEX
from xoron_pipelines.training.sft import build_sft_example, collate
from xoron_pipelines.validation import StrictModel

Batch = dict[str, torch.Tensor]


class DPOSettings(StrictModel):
    """Settings of the preference stage."""

    beta: float = Field(0.1, gt=0, description="DPO temperature: implicit reward = beta * (logp_policy - logp_ref)")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO loss of a batch of (B,) summed log-probs, and metrics: ``rewards/chosen``,
    ``rewards/rejected`` (mean implicit rewards), ``rewards/margins`` (their mean difference),
    ``rewards/accuracies`` (fraction of pairs with chosen reward > rejected reward)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    c, r = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    metrics = {
        "rewards/chosen": float(c.mean()),
        "rewards/rejected": float(r.mean()),
        "rewards/margins": float((c - r).mean()),
        "rewards/accuracies": float((c > r).float().mean()),
    }
    return loss, metrics


def _token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token log-probabilities of the labelled tokens per row: (B, T, V), (B, T) -> (B,)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def sequence_logps(
    model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) sum of ``log p(token | prefix)`` over the response tokens (``labels != -100``; labels
    unshifted, aligned with ``input_ids``)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _token_logps(logits, labels)


def _as_messages(value: str | Sequence[Mapping[str, Any]], role: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [dict(m) for m in value]


def build_preference_example(
    prompt: str | Sequence[Mapping[str, Any]],
    chosen: str | Sequence[Mapping[str, Any]],
    rejected: str | Sequence[Mapping[str, Any]],
    tokenizer,
    max_len: int,
) -> dict[str, torch.Tensor]:
    """``{chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels}`` of one pair.

    ``prompt`` is a user message (a string) or the conversation so far (a message list); each
    answer is an assistant message (a string) or the turns that follow the prompt (a message
    list), appended to the prompt and rendered with the chat template; labels cover the answer's
    assistant turns and their closing tags only (never an assistant turn of the prompt). Block
    weights do not apply (DPO sums plain log-probs).
    """
    out = {}
    context = _as_messages(prompt, "user")
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        messages = context + _as_messages(answer, "assistant")
        ex = build_sft_example(messages, tokenizer, max_len, first_target=len(context))
        out[f"{key}_input_ids"], out[f"{key}_labels"] = ex["input_ids"], ex["labels"]
    return out


def _concat_forward(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen and rejected rows in one forward (padded to one width): their (B,) log-probs and
    the model's auxiliary loss (MoE balancing, 0 without)."""
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def rows(key: str, fill: int) -> torch.Tensor:
        parts = [
            F.pad(batch[f"{side}_{key}"], (0, width - batch[f"{side}_{key}"].shape[1]), value=fill)
            for side in ("chosen", "rejected")
        ]
        return torch.cat(parts)

    input_ids, labels = rows("input_ids", 0), rows("labels", IGNORE_INDEX)
    mask = rows("attention_mask", 0) if "chosen_attention_mask" in batch else None
    out = model(input_ids=input_ids, attention_mask=mask)
    logps = _token_logps(out.logits, labels)
    n = batch["chosen_input_ids"].shape[0]
    aux = getattr(out, "aux_loss", None)
    return logps[:n], logps[n:], aux if isinstance(aux, torch.Tensor) else logps.new_zeros(())


@torch.no_grad()
def pair_logps(
    model: nn.Module, examples: Sequence[Mapping[str, torch.Tensor]], batch_size: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probs ``(chosen, rejected)`` of ``model`` on every one of ``examples``
    (rendered preference examples, :func:`build_preference_example`), in order, padded batches of
    ``batch_size`` (the last one may be smaller: no pair is dropped): two (N,) float tensors on
    the CPU, one entry per pair."""
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for start in range(0, len(examples), max(1, batch_size)):
        batch = collate(list(examples[start : start + max(1, batch_size)]), pad_token_id)
        c, r, _ = _concat_forward(model, {k: v.to(device) for k, v in batch.items()})
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


def preference_counts(
    policy: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor], beta: float
) -> dict[str, float]:
    """Held-out preference accuracy from per-pair ``(chosen, rejected)`` log-probs of the policy
    and of the reference: ``n`` pairs and the number of pairs where

    * ``implicit_reward_correct``: the DPO implicit reward of the chosen answer exceeds the
      rejected one's, ``beta * (logp_pi(y_w) - logp_ref(y_w)) > beta * (logp_pi(y_l) - logp_ref(y_l))``;
    * ``policy_margin_correct``: the policy alone gives the chosen answer the higher log-prob;
    * ``reference_margin_correct``: the reference alone does (the baseline the stage starts from).

    Ties count as wrong. The accuracies are the counts over ``n``."""
    (pc, pr), (rc, rr) = policy, reference
    n = int(pc.numel())
    if n == 0:
        raise ValueError("preference accuracy needs at least one held-out pair")
    counts = {
        "implicit_reward_correct": int((beta * (pc - rc) > beta * (pr - rr)).sum()),
        "policy_margin_correct": int((pc > pr).sum()),
        "reference_margin_correct": int((rc > rr).sum()),
    }
    out: dict[str, float] = {"n": float(n)}
    for key, count in counts.items():
        out[key] = float(count)
        out[key.replace("_correct", "_accuracy")] = count / n
    return out


def make_reference(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (eval mode, no gradients): the DPO reference."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def dpo_step_loss(
    policy: nn.Module, reference: nn.Module, batch: Batch, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss of a collated preference batch (plus the policy's auxiliary MoE loss), and metrics."""
    policy_chosen, policy_rejected, aux = _concat_forward(policy, batch)
    with torch.no_grad():
        ref_chosen, ref_rejected, _ = _concat_forward(reference, batch)
    loss, metrics = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return loss + aux.to(loss.dtype), metrics


class DPOLossFn:
    """``loss_fn(model, batch) -> loss`` for the training engine, holding the reference and beta;
    ``last_metrics`` keeps the metrics of the latest call."""

    def __init__(self, reference: nn.Module, beta: float) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.reference, self.beta = reference, beta
        self.last_metrics: dict[str, float] = {}

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        device = next(model.parameters()).device
        if next(self.reference.parameters()).device != device:
            self.reference.to(device)  # the reference follows the policy to the training device
        loss, self.last_metrics = dpo_step_loss(model, self.reference, batch, self.beta)
        return loss


def make_dpo_loss_fn(reference: nn.Module, beta: float) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """The engine's ``loss_fn`` for DPO against ``reference`` (see :class:`DPOLossFn`)."""
    return DPOLossFn(reference, beta)


__all__ = [
    "DPOLossFn",
    "DPOSettings",
    "build_preference_example",
    "dpo_loss",
    "dpo_step_loss",
    "make_dpo_loss_fn",
    "make_reference",
    "pair_logps",
    "preference_counts",
    "sequence_logps",
]
