"""Loss weighting: seed 000's block-weighted token loss and its modality loss weights.

Two kinds of weights, both in :class:`LossWeights` (field names as in seed 000's TrainingConfig):

* **Block weights** (``cot_loss_weight`` 1.5, ``tool_loss_weight`` 1.3,
  ``anti_hallucination_loss_weight`` 1.2, ``code_exec_loss_weight`` 1.2): every token inside a
  chain-of-thought / tool / anti-hallucination / code-execution block (the token pairs of
  :data:`xoron_pipelines.tokens.LOSS_BLOCK_PAIRS`) gets its group's weight in the token-level
  cross-entropy; other tokens get ``default_loss_weight`` (1.0). A token inside blocks of several
  groups (nested) takes the highest of their weights. The opening and closing tokens belong to
  their block. :func:`block_loss_weights` computes this for a whole (B, T) batch at once.
* **Modality weights** (``llm_loss_weight`` 1.0, ``image_diffusion_loss_weight`` 0.1,
  ``video_diffusion_loss_weight`` 0.1, ``asr_loss_weight`` 0.1, ``tts_loss_weight`` 0.1):
  :meth:`LossWeights.combine` sums the per-modality losses of a multimodal step with them. Only
  the LLM loss exists in this round; the other weights are configuration for the multimodal round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import Field

from xoron_pipelines.tokens import LOSS_BLOCK_PAIRS
from xoron_pipelines.validation import StrictModel

#: block groups of the token registry, in registry order
BLOCK_GROUPS: tuple[str, ...] = tuple(LOSS_BLOCK_PAIRS)
#: modalities :meth:`LossWeights.combine` knows
MODALITIES: tuple[str, ...] = ("llm", "image_diffusion", "video_diffusion", "asr", "tts")


class LossWeights(StrictModel):
    """Seed 000's loss weights: per token block group and per modality."""

    default_loss_weight: float = Field(1.0, ge=0, description="weight of tokens outside every weighted block")
    cot_loss_weight: float = Field(1.5, ge=0, description="tokens inside <|think|> ... <|/think|>")
    tool_loss_weight: float = Field(1.3, ge=0, description="tokens inside tool_call / tool_result blocks")
    anti_hallucination_loss_weight: float = Field(1.2, ge=0, description="tokens inside uncertain / idk blocks")
    code_exec_loss_weight: float = Field(1.2, ge=0, description="tokens inside exec / exec_result / jupyter blocks")
    llm_loss_weight: float = Field(1.0, ge=0)
    image_diffusion_loss_weight: float = Field(0.1, ge=0)
    video_diffusion_loss_weight: float = Field(0.1, ge=0)
    asr_loss_weight: float = Field(0.1, ge=0)
    tts_loss_weight: float = Field(0.1, ge=0)

    def block_weights(self) -> dict[str, float]:
        """Block group (``cot``, ``tool``, ``anti_hallucination``, ``code_exec``) -> weight."""
        return {group: getattr(self, f"{group}_loss_weight") for group in BLOCK_GROUPS}

    def modality_weights(self) -> dict[str, float]:
        """Modality (``llm``, ``image_diffusion``, ``video_diffusion``, ``asr``, ``tts``) -> weight."""
        return {m: getattr(self, f"{m}_loss_weight") for m in MODALITIES}

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum(weight[m] * losses[m])`` over the modalities present; an unknown name is an error."""
        if not losses:
            raise ValueError("combine() needs at least one loss")
        weights = self.modality_weights()
        unknown = sorted(set(losses) - set(weights))
        if unknown:
            raise KeyError(f"unknown modality loss {unknown}; known: {list(MODALITIES)}")
        return sum(weights[name] * loss for name, loss in losses.items())


class BlockWeighter:
    """Token ids of each group's block tokens, resolved once from a tokenizer, and the weights.

    ``BlockWeighter.from_tokenizer(tokenizer, LossWeights())(input_ids)`` gives the loss weights
    of a (T,) or (B, T) id tensor. A block token the tokenizer does not know as one id is an error
    (the tokenizer must carry the registry's special tokens).
    """

    def __init__(
        self, pairs: Mapping[str, Sequence[tuple[int, int]]], weights: Mapping[str, float], default: float = 1.0
    ) -> None:
        self.groups = [
            (torch.tensor([o for o, _ in pairs[g]]), torch.tensor([c for _, c in pairs[g]]), float(weights[g]))
            for g in pairs
        ]
        self.default = float(default)

    @classmethod
    def from_tokenizer(cls, tokenizer, weights: LossWeights | None = None) -> BlockWeighter:
        weights = weights or LossWeights()
        unk = getattr(tokenizer, "unk_token_id", None)
        pairs: dict[str, list[tuple[int, int]]] = {}
        for group, token_pairs in LOSS_BLOCK_PAIRS.items():
            ids = []
            for open_, close in token_pairs:
                o, c = tokenizer.convert_tokens_to_ids([open_, close])
                if o is None or c is None or unk in (o, c):
                    raise ValueError(f"the tokenizer has no single id for block tokens {open_!r} / {close!r}")
                ids.append((int(o), int(c)))
            pairs[group] = ids
        return cls(pairs, weights.block_weights(), weights.default_loss_weight)

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return block_loss_weights(input_ids, self.groups, self.default)


def _inside(input_ids: torch.Tensor, opens: torch.Tensor, closes: torch.Tensor) -> torch.Tensor:
    """Bool mask of the tokens inside a block of one group, opening and closing tokens included.

    The nesting depth after each token is the running sum of +1 (opening) / -1 (closing),
    reflected at 0 so a stray closing token does not make later blocks disappear:
    ``depth = S - min(0, cummin(S))`` with ``S = cumsum(open - close)``. A token is inside when
    the depth before or after it is positive (the closing token has depth > 0 before it).
    """
    step = (
        torch.isin(input_ids, opens.to(input_ids.device)).long()
        - torch.isin(input_ids, closes.to(input_ids.device)).long()
    )
    total = step.cumsum(-1)
    depth = total - total.cummin(-1).values.clamp(max=0)
    before = torch.nn.functional.pad(depth[..., :-1], (1, 0))
    return (depth > 0) | (before > 0)


def block_loss_weights(
    input_ids: torch.Tensor, groups: Sequence[tuple[torch.Tensor, torch.Tensor, float]], default: float = 1.0
) -> torch.Tensor:
    """Float32 loss weight per token of ``input_ids`` ((T,) or (B, T)), vectorised over the batch.

    ``groups``: ``(opening ids, closing ids, weight)`` per block group. A token inside blocks of
    one or more groups gets the highest of those groups' weights; a token outside all gets
    ``default``. Blocks left open (truncated sequences) run to the end of the row.
    """
    out = torch.full(input_ids.shape, float("-inf"), dtype=torch.float32, device=input_ids.device)
    for opens, closes, weight in groups:
        out = torch.where(_inside(input_ids, opens, closes), out.clamp(min=weight), out)
    return torch.where(torch.isinf(out), torch.full_like(out, default), out)


__all__ = ["BLOCK_GROUPS", "MODALITIES", "BlockWeighter", "LossWeights", "block_loss_weights"]
