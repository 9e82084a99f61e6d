"""Reference models for ablations: a GPT-2-style baseline of the same parameter count.

The baseline is transformers' own ``GPT2LMHeadModel`` (LayerNorm, learned absolute positions,
GELU, dense MLP, biases), built from a ``GPT2Config`` solved from an :class:`XoronConfig`:

* ``vocab_size``, ``n_positions`` (= ``max_position_embeddings``), the special ids, the dropout,
  ``initializer_range`` and weight tying are the Xoron model's, so the two read the same token ids
  and sequence lengths;
* ``n_embd`` / ``n_layer`` / ``n_head`` default to the Xoron model's ``hidden_size`` /
  ``num_layers`` / ``num_heads`` (each may be fixed to another value);
* ``n_inner`` (the MLP width) is then solved so the total parameter count equals the Xoron
  model's ``count_parameters(config)["total"]`` to within one MLP column per layer (``2 n_embd + 1``
  parameters each): well under 1 % for any model worth comparing.

A model that is not an :class:`XoronConfig` model counts as dense (``active_per_token == total``):
:func:`parameter_counts` gives the same ``{"total", "active_per_token"}`` for both kinds.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from xoron_pipelines.model.config import XoronConfig
from xoron_pipelines.model.params_count import count_parameters

#: baselines by name (``ablation.variants[].baseline``)
BASELINES = ("gpt2",)


def gpt2_parameter_count(config: GPT2Config) -> int:
    """Total parameters of ``GPT2LMHeadModel(config)`` (tied lm_head counted once), analytically."""
    h, layers, v, p = config.n_embd, config.n_layer, config.vocab_size, config.n_positions
    inner = config.n_inner if config.n_inner is not None else 4 * h
    block = (4 * h * h + 4 * h) + (2 * h * inner + inner + h) + 2 * (2 * h)  # attn, mlp, ln_1 + ln_2
    lm_head = 0 if config.tie_word_embeddings else v * h
    return v * h + p * h + layers * block + 2 * h + lm_head


def gpt2_config_matching(
    config: XoronConfig,
    n_embd: int | None = None,
    n_layer: int | None = None,
    n_head: int | None = None,
) -> GPT2Config:
    """A ``GPT2Config`` with the total parameter count of ``config`` (see the module doc)."""
    h = n_embd or config.hidden_size
    layers = n_layer or config.num_layers
    heads = n_head or config.num_heads
    if h % heads:
        raise ValueError(f"gpt2 baseline: n_embd {h} is not a multiple of n_head {heads}")
    target = count_parameters(config)["total"]
    gpt2 = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_position_embeddings,
        n_embd=h,
        n_layer=layers,
        n_head=heads,
        n_inner=1,
        activation_function="gelu_new",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.attention_dropout,
        layer_norm_epsilon=1e-5,
        initializer_range=config.initializer_range,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
        use_cache=False,
    )
    fixed = gpt2_parameter_count(gpt2) - layers * (2 * h + 1)  # everything but the MLP width
    inner = round((target - fixed) / (layers * (2 * h + 1)))
    if inner < 1:
        raise ValueError(
            f"gpt2 baseline: {target:,} parameters are fewer than a GPT-2 of n_embd={h}, n_layer={layers} "
            f"needs without its MLP ({fixed:,}); choose a smaller n_embd or n_layer"
        )
    gpt2.n_inner = inner
    return gpt2


def build_baseline(name: str, config: XoronConfig, **dims: Any) -> nn.Module:
    """The baseline ``name`` (one of :data:`BASELINES`) matched to ``config``, freshly initialised
    (seed the RNG first for a reproducible start)."""
    if name != "gpt2":
        raise ValueError(f"unknown baseline {name!r}; choose one of {list(BASELINES)}")
    model = GPT2LMHeadModel(gpt2_config_matching(config, **dims))
    model.loss_type = "ForCausalLM"  # transformers cannot tell from the class name, and warns once
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"total", "active_per_token"}`` of a Xoron model (analytic, MoE / PEER aware) or of any
    other model (dense: every parameter is active)."""
    config = getattr(model, "config", None)
    if isinstance(config, XoronConfig):
        counts = count_parameters(config)
        return {"total": counts["total"], "active_per_token": counts["active_per_token"]}
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "active_per_token": total}


__all__ = ["BASELINES", "build_baseline", "gpt2_config_matching", "gpt2_parameter_count", "parameter_counts"]
