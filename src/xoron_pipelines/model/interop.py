"""Interop with native Hugging Face transformers classes.

Our model mirrors the parameter names and math of transformers 5.x, so exporting to a *native*
class (loadable with ``AutoModelForCausalLM.from_pretrained`` and no ``trust_remote_code``) is
a config mapping plus an (almost) identity state dict:

=======================================  =========================  ===========================
our architecture                         native class               notes
=======================================  =========================  ===========================
dense, MHA/GQA                           LlamaForCausalLM
dense, MHA/GQA, sliding window           MistralForCausalLM         same weights as Llama
MLA (dense or MoE, sigmoid router)       DeepseekV3ForCausalLM      selection bias kept
MoE + MHA/GQA, sigmoid router            Glm4MoeForCausalLM         selection bias kept
MoE + MHA/GQA, softmax router            Qwen2MoeForCausalLM        needs zero bias, scale 1
PEER, learned positions, LayerNorm       none                       :func:`save_xoron`
=======================================  =========================  ===========================

The RoPE layout is HF ``rotate_half`` everywhere (DeepseekV3 gets ``rope_interleave=False``),
``rope_scaling`` becomes ``rope_parameters`` (linear, or YaRN with ``truncate=True``), and MoE
weights keep the transformers 5 stacked layout (``save_pretrained`` writes them per expert,
the on-disk format of the original DeepSeek/GLM/Qwen checkpoints).

Mapping tricks (exact up to float summation order; measured logit gaps are <= 1e-6):

* DeepseekV3 / Glm4Moe always build a shared expert; with ``num_shared_experts == 0`` we
  export one whose ``down_proj`` is zero, so it adds exactly 0.
* They also make *every* layer from ``first_k_dense_replace`` on an MoE block. Our dense
  layers between MoE layers (``moe_layer_freq > 1``, seed 000's default) become MoE blocks whose
  routed experts are zero and whose shared expert is the dense MLP; shared experts are
  zero-padded to a common width (padded units compute silu(0) * 0 = 0).
* Qwen2Moe gates its shared expert with ``sigmoid(w . x)``; a zero ``w`` gives exactly 0.5,
  and we export ``2 * down_proj`` (scaling by a power of two is exact). Its ``mlp_only_layers``
  reproduces any dense/MoE layer pattern.
* Expert-group routing is switched off with ``n_group = topk_group = 1``.

Not mapped: Qwen3Moe (always applies q/k RMSNorm, which we do not have) and DeepseekV2 (no
sigmoid router or selection bias, complex-number RoPE).

Anything the target cannot represent is listed by :func:`unsupported_features`, and
:func:`save_native` raises ``ValueError`` naming it before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xoron_pipelines.atomic import atomic_dir

logger = logging.getLogger(__name__)

LLAMA = "LlamaForCausalLM"
MISTRAL = "MistralForCausalLM"
DEEPSEEK_V3 = "DeepseekV3ForCausalLM"
GLM4_MOE = "Glm4MoeForCausalLM"
QWEN2_MOE = "Qwen2MoeForCausalLM"
NATIVE_ARCHITECTURES = (LLAMA, MISTRAL, DEEPSEEK_V3, GLM4_MOE, QWEN2_MOE)

_BIAS_KEY = "e_score_correction_bias"


# --------------------------------------------------------------------------- config inspection
def _ffn_types(config) -> list[str]:
    return [config.ffn_type(i) for i in range(config.num_layers)]


def _moe_layers(config) -> list[int]:
    return [i for i, kind in enumerate(_ffn_types(config)) if kind == "moe"]


def _head_dim(config) -> int:
    return config.head_dim or config.hidden_size // config.num_heads


def _expert_size(config) -> int:
    return config.moe_intermediate_size or config.intermediate_size


def _kv_heads(config) -> int:
    return config.num_kv_heads or config.num_heads


def native_architecture(config) -> str | None:
    """The native transformers class this config maps to, or None when there is none.

    The choice follows the architecture (attention type, MoE, router scoring); a config whose
    other features the chosen class cannot represent still gets a name here, and
    :func:`unsupported_features` says what stands in the way.
    """
    if _blocking_everywhere(config):
        return None
    has_moe = bool(_moe_layers(config))
    if config.attention_type == "mla":
        return DEEPSEEK_V3
    if not has_moe:
        return MISTRAL if config.sliding_window else LLAMA
    return QWEN2_MOE if config.router_scoring == "softmax" else GLM4_MOE


def _blocking_everywhere(config) -> list[str]:
    """Features no supported native class can represent."""
    problems = []
    if "peer" in _ffn_types(config):
        problems.append("PEER product-key expert layers (use_peer=True): no native transformers class has them")
    if config.position_type != "rope":
        problems.append(f"position_type={config.position_type!r} (native classes use RoPE)")
    if config.norm_type != "rmsnorm":
        problems.append(f"norm_type={config.norm_type!r} (LayerNorm; the native classes use RMSNorm)")
    scaling = config.rope_scaling or {}
    if scaling and scaling.get("type", scaling.get("rope_type")) not in ("linear", "yarn"):
        problems.append(f"rope_scaling type {scaling.get('type')!r}")
    return problems


def unsupported_features(config, target: str | None = None) -> list[str]:
    """Every feature of ``config`` that the native class ``target`` cannot represent exactly.

    ``target`` defaults to :func:`native_architecture`. An empty list means the export is
    lossless. Training-only settings (dropout, aux-loss coefficient, bias update rate,
    chunked attention, kernel choice) do not change inference math and are not listed.
    """
    target = target or native_architecture(config)
    problems = _blocking_everywhere(config)
    if target is None:
        return problems or ["no native transformers class for this configuration"]
    if target not in NATIVE_ARCHITECTURES:
        return [f"unknown native architecture {target!r}; known: {', '.join(NATIVE_ARCHITECTURES)}"]
    moe = _moe_layers(config)
    if target in (LLAMA, MISTRAL) and moe:
        problems.append(f"MoE layers {moe} ({target} is dense-only)")
    if target == LLAMA and config.sliding_window:
        problems.append(f"sliding_window={config.sliding_window} (LlamaForCausalLM has none)")
    if target == DEEPSEEK_V3 and config.attention_type != "mla":
        problems.append(f"attention_type={config.attention_type!r} (DeepseekV3 is MLA-only)")
    if target in (LLAMA, MISTRAL, GLM4_MOE, QWEN2_MOE) and config.attention_type == "mla":
        problems.append(f"attention_type='mla' ({target} has no multi-head latent attention)")
    if target in (DEEPSEEK_V3, GLM4_MOE):
        problems += _deepseek_router_problems(config, target, moe)
    if target == QWEN2_MOE:
        problems += _qwen2_router_problems(config)
    return problems


def _deepseek_router_problems(config, target: str, moe: list[int]) -> list[str]:
    problems = []
    if config.sliding_window:
        problems.append(f"sliding_window={config.sliding_window} ({target} has none)")
    if not moe:
        return problems
    if config.router_scoring != "sigmoid":
        problems.append(f"router_scoring={config.router_scoring!r} ({target}'s router is sigmoid-only)")
    return problems


def _qwen2_router_problems(config) -> list[str]:
    problems = []
    if config.router_scoring != "softmax":
        problems.append(f"router_scoring={config.router_scoring!r} (Qwen2Moe's router is softmax-only)")
    if float(config.routed_scaling_factor) != 1.0:
        problems.append(f"routed_scaling_factor={config.routed_scaling_factor} (Qwen2Moe has no routed scaling)")
    return problems


def _state_problems(model, target: str) -> list[str]:
    """Problems that depend on the weights, not the config (learned selection bias)."""
    if target != QWEN2_MOE:
        return []
    biased = [name for name, buf in model.named_buffers() if name.endswith(_BIAS_KEY) and bool(torch.any(buf != 0))]
    if biased:
        return [
            f"nonzero {_BIAS_KEY} in {len(biased)} MoE layer(s) (Qwen2Moe has no selection bias; "
            "use router_scoring='sigmoid' to export as Glm4Moe, or bias_update_rate=0)"
        ]
    return []


# --------------------------------------------------------------------------- config mapping
def _rope_parameters(config) -> dict[str, Any]:
    """Our ``rope_theta`` + ``rope_scaling`` as a transformers 5 ``rope_parameters`` dict."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(config.rope_theta)}
    scaling = dict(config.rope_scaling or {})
    if not scaling:
        return params
    kind = scaling.pop("type", None) or scaling.pop("rope_type", "default")
    params["rope_type"] = kind
    params["factor"] = float(scaling["factor"])
    if kind == "yarn":
        params["original_max_position_embeddings"] = int(
            scaling.get("original_max_position_embeddings") or config.max_position_embeddings
        )
        for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor"):
            if scaling.get(key) is not None:
                params[key] = float(scaling[key])
        params["truncate"] = bool(scaling.get("truncate", True))
    return params


def _common_config(config) -> dict[str, Any]:
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": _kv_heads(config),
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "rope_parameters": _rope_parameters(config),
        "attention_dropout": config.attention_dropout,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }


def _first_dense(config) -> int:
    moe = _moe_layers(config)
    return moe[0] if moe else config.num_layers


def _emulated_dense_layers(config) -> list[int]:
    """Dense layers after the first MoE layer. DeepseekV3/Glm4Moe make every layer from
    ``first_k_dense_replace`` on an MoE block, so these become MoE blocks whose routed experts
    are zero and whose shared expert carries the dense MLP (see :func:`_deepseek_mlp`)."""
    first = _first_dense(config)
    return [i for i, kind in enumerate(_ffn_types(config)) if i > first and kind == "dense"]


def _native_shared_experts(config) -> int:
    """n_shared_experts of the native DeepSeek-style block: wide enough for our shared experts
    and for any emulated dense MLP (narrower ones are zero-padded, which adds exactly 0)."""
    size = _expert_size(config)
    need = size * (config.num_shared_experts or 0)
    if _emulated_dense_layers(config):
        need = max(need, config.intermediate_size)
    return max(1, -(-need // size))


def _moe_config(config) -> dict[str, Any]:
    """Fields shared by DeepseekV3 and Glm4Moe (DeepSeek-style router)."""
    return {
        "moe_intermediate_size": _expert_size(config),
        "n_routed_experts": config.num_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
        "n_shared_experts": _native_shared_experts(config),
        "routed_scaling_factor": float(config.routed_scaling_factor),
        "norm_topk_prob": bool(config.norm_topk_prob),
        "n_group": 1,
        "topk_group": 1,
        "first_k_dense_replace": _first_dense(config),
        "num_mtp_layers": 0,
    }


def _llama_config(config) -> dict[str, Any]:
    return {
        **_common_config(config),
        "head_dim": _head_dim(config),
        "attention_bias": False,
        "mlp_bias": False,
    }


def _mistral_config(config) -> dict[str, Any]:
    return {**_common_config(config), "head_dim": _head_dim(config), "sliding_window": config.sliding_window}


def _deepseek_config(config) -> dict[str, Any]:
    return {
        **_common_config(config),
        **_moe_config(config),
        "num_key_value_heads": config.num_heads,
        "q_lora_rank": config.q_lora_rank,
        "kv_lora_rank": config.kv_lora_rank,
        "qk_rope_head_dim": config.qk_rope_head_dim,
        "qk_nope_head_dim": config.qk_nope_head_dim,
        "v_head_dim": config.v_head_dim,
        "rope_interleave": False,
        "attention_bias": False,
    }


def _glm4_config(config) -> dict[str, Any]:
    common = _common_config(config)
    common["rope_parameters"]["partial_rotary_factor"] = 1.0
    return {
        **common,
        **_moe_config(config),
        "head_dim": _head_dim(config),
        "use_qk_norm": False,
        "attention_bias": False,
    }


def _qwen2_config(config) -> dict[str, Any]:
    moe = set(_moe_layers(config))
    window = config.sliding_window
    return {
        **_common_config(config),
        "head_dim": _head_dim(config),
        "qkv_bias": False,
        "moe_intermediate_size": _expert_size(config),
        "shared_expert_intermediate_size": _expert_size(config) * max(1, config.num_shared_experts or 0),
        "num_experts": config.num_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
        "norm_topk_prob": bool(config.norm_topk_prob),
        "decoder_sparse_step": 1,
        "mlp_only_layers": [i for i in range(config.num_layers) if i not in moe],
        "router_aux_loss_coef": float(config.aux_loss_coef or 0.0),
        "use_sliding_window": bool(window),
        "sliding_window": window,
        "max_window_layers": config.num_layers,
        "layer_types": [("sliding_attention" if window else "full_attention")] * config.num_layers,
    }


@dataclass(frozen=True)
class _Target:
    """How one native class is reached: its config fields and its state-dict fix-ups."""

    model_type: str
    config_fields: Callable[[Any], dict[str, Any]]
    moe_style: str | None  # "deepseek" | "qwen2" | None


_TARGETS: dict[str, _Target] = {
    LLAMA: _Target("llama", _llama_config, None),
    MISTRAL: _Target("mistral", _mistral_config, None),
    DEEPSEEK_V3: _Target("deepseek_v3", _deepseek_config, "deepseek"),
    GLM4_MOE: _Target("glm4_moe", _glm4_config, "deepseek"),
    QWEN2_MOE: _Target("qwen2_moe", _qwen2_config, "qwen2"),
}


def _resolve_target(model_or_config, target: str | None) -> str:
    """The target class, or ValueError listing every feature that blocks a lossless export."""
    config = getattr(model_or_config, "config", model_or_config)
    target = target or native_architecture(config)
    problems = unsupported_features(config, target)
    if target is not None and hasattr(model_or_config, "named_buffers"):
        problems += _state_problems(model_or_config, target)
    if problems:
        name = target or "any native transformers class"
        raise ValueError(
            f"cannot export to {name} without changing the model: "
            + "; ".join(problems)
            + ". Use save_xoron() to save with the xoron config instead."
        )
    return target


def to_native_config(config, target: str | None = None, dtype: torch.dtype | None = None):
    """The native ``PreTrainedConfig`` for ``config`` (raises ValueError when not lossless)."""
    from transformers import AutoConfig

    target = _resolve_target(config, target)
    spec = _TARGETS[target]
    fields = spec.config_fields(config)
    native = AutoConfig.for_model(spec.model_type, **fields)
    native.architectures = [target]
    if dtype is not None:
        native.dtype = dtype
    return native


# --------------------------------------------------------------------------- weights
def _layer_prefix(i: int) -> str:
    return f"model.layers.{i}.mlp."


def _padded_mlp(sd: dict[str, torch.Tensor], src: str, width: int, config, like: torch.Tensor) -> dict:
    """The SwiGLU MLP at prefix ``src`` (or a zero one when absent) zero-padded to ``width``.

    Padded units have zero gate/up rows and zero down columns: silu(0) * 0 = 0, so they add
    exactly nothing.
    """
    hidden = config.hidden_size
    out = {
        "gate_proj.weight": like.new_zeros(width, hidden),
        "up_proj.weight": like.new_zeros(width, hidden),
        "down_proj.weight": like.new_zeros(hidden, width),
    }
    if src + "down_proj.weight" in sd:
        inter = sd[src + "down_proj.weight"].shape[1]
        for part in ("gate_proj", "up_proj"):
            out[f"{part}.weight"][:inter] = sd.pop(f"{src}{part}.weight")
        out["down_proj.weight"][:, :inter] = sd.pop(src + "down_proj.weight")
    return out


def _deepseek_mlp(sd: dict[str, torch.Tensor], config, layer: int) -> None:
    """Layer ``layer``'s FFN as a DeepseekV3/Glm4Moe MoE block (in place).

    A dense layer becomes a block with zero routed experts (their output is exactly 0) and the
    dense MLP as the shared expert; shared experts are padded to the native width.
    """
    p = _layer_prefix(layer)
    like = sd["model.embed_tokens.weight"]
    width = _native_shared_experts(config) * _expert_size(config)
    if config.ffn_type(layer) == "dense":
        shared = _padded_mlp(sd, p, width, config, like)
        e, h, i = config.num_experts, config.hidden_size, _expert_size(config)
        sd[p + "gate.weight"] = like.new_zeros(e, h)
        sd[p + "gate." + _BIAS_KEY] = torch.zeros(e, dtype=torch.float32, device=like.device)
        sd[p + "experts.gate_up_proj"] = like.new_zeros(e, 2 * i, h)
        sd[p + "experts.down_proj"] = like.new_zeros(e, h, i)
    else:
        shared = _padded_mlp(sd, p + "shared_experts.", width, config, like)
        sd[p + "gate." + _BIAS_KEY] = sd[p + "gate." + _BIAS_KEY].to(torch.float32)
    for key, value in shared.items():
        sd[p + "shared_experts." + key] = value


def _qwen2_mlp(sd: dict[str, torch.Tensor], config, layer: int) -> None:
    """One MoE layer as a Qwen2MoeSparseMoeBlock (in place): no selection bias, shared expert
    gated by sigmoid(0) = 0.5 with a doubled down_proj (exact: scaling by 2 is exact)."""
    p = _layer_prefix(layer)
    like = sd["model.embed_tokens.weight"]
    sd.pop(p + "gate." + _BIAS_KEY, None)
    width = _expert_size(config) * max(1, config.num_shared_experts or 0)
    for part, weight in _padded_mlp(sd, p + "shared_experts.", width, config, like).items():
        sd[f"{p}shared_expert.{part}"] = weight * 2 if part.startswith("down_proj") else weight
    sd[p + "shared_expert_gate.weight"] = like.new_zeros(1, config.hidden_size)


def convert_state_dict(model, target: str | None = None) -> dict[str, torch.Tensor]:
    """Our model's weights under the native class's names (tensors detached and contiguous).

    Non-persistent training statistics (expert load counters) are dropped; any *parameter*
    the native class has no place for makes :func:`save_native` fail instead of being lost.
    """
    config = model.config
    target = _resolve_target(model, target)
    style = _TARGETS[target].moe_style
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    if style == "deepseek":
        for layer in range(_first_dense(config), config.num_layers):
            _deepseek_mlp(sd, config, layer)
    elif style == "qwen2":
        for layer in _moe_layers(config):
            _qwen2_mlp(sd, config, layer)
    return sd


def _drop_extras(sd: dict[str, torch.Tensor], native, model) -> dict[str, torch.Tensor]:
    """Drop our buffers that the native class has no slot for; refuse to drop parameters."""
    wanted = set(native.state_dict())
    extras = sorted(set(sd) - wanted)
    params = {name for name, _ in model.named_parameters()}
    lost = [k for k in extras if k in params]
    if lost:
        raise ValueError(f"parameters with no place in {type(native).__name__}: {lost}")
    if extras:
        logger.info("not exported (training statistics): %s", extras)
    return {k: v for k, v in sd.items() if k in wanted}


def to_native_model(model, target: str | None = None):
    """A native transformers model holding exactly our weights (in eval mode)."""
    from transformers import AutoModelForCausalLM

    target = _resolve_target(model, target)
    dtype = next(model.parameters()).dtype
    native_config = to_native_config(model.config, target, dtype=dtype)
    native = AutoModelForCausalLM.from_config(native_config, dtype=dtype)
    sd = _drop_extras(convert_state_dict(model, target), native, model)
    native.load_state_dict(sd, strict=True)
    if native_config.tie_word_embeddings:
        native.tie_weights()
    return native.eval()


# --------------------------------------------------------------------------- saving
def save_native(model, path: str | os.PathLike, tokenizer=None, target: str | None = None) -> Path:
    """Save ``model`` as a native transformers checkpoint (safetensors) at ``path``.

    The directory loads with ``AutoModelForCausalLM.from_pretrained(path)`` without
    ``trust_remote_code``. Raises ValueError listing every unsupported feature before anything
    is written; the directory appears atomically, complete or not at all.
    """
    target = _resolve_target(model, target)
    native = to_native_model(model, target)

    with atomic_dir(path) as tmp:
        native.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    logger.info("saved %s checkpoint to %s", target, path)
    return Path(path)


_XORON_README = """# Xoron model checkpoint

No native Hugging Face transformers class exists for this architecture, so it is saved with
its own config (`model_type: "xoron"`). Reason(s):

{reasons}

Load it with the xoron_pipelines package (no remote code):

```python
from xoron_pipelines.model import XoronForCausalLM
model = XoronForCausalLM.from_pretrained("{name}")
```
"""


def save_xoron(model, path: str | os.PathLike, tokenizer=None) -> Path:
    """Save with our own config (model_type "xoron") + safetensors + a README saying why."""
    reasons = unsupported_features(model.config) + _state_problems(model, native_architecture(model.config) or "")
    text = _XORON_README.format(
        reasons="\n".join(f"- {r}" for r in reasons) or "- (saved in xoron format on request)",
        name=Path(path).name,
    )

    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(text, encoding="utf-8")
    return Path(path)


def export(model, path: str | os.PathLike, tokenizer=None, prefer_native: bool = True) -> dict:
    """Save natively when lossless, else in xoron format; returns what was written and why."""
    target = native_architecture(model.config)
    problems = unsupported_features(model.config, target)
    if target:
        problems += _state_problems(model, target)
    if prefer_native and not problems:
        save_native(model, path, tokenizer, target)
        return {"format": "native", "architecture": target, "unsupported": []}
    save_xoron(model, path, tokenizer)
    return {"format": "xoron", "architecture": "XoronForCausalLM", "unsupported": problems}


# --------------------------------------------------------------------------- reverse direction
def _rope_scaling_from(native_config) -> dict[str, Any] | None:
    params = dict(native_config.rope_parameters or {})
    kind = params.pop("rope_type", "default")
    if kind == "default":
        return None
    keep = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
    return {"type": kind, **{k: params[k] for k in keep if params.get(k) is not None}}


def _xoron_fields(nc, arch: str) -> dict[str, Any]:
    """XoronConfig keyword arguments equivalent to the native config ``nc``."""
    fields: dict[str, Any] = {
        "vocab_size": nc.vocab_size,
        "hidden_size": nc.hidden_size,
        "intermediate_size": nc.intermediate_size,
        "num_layers": nc.num_hidden_layers,
        "num_heads": nc.num_attention_heads,
        "num_kv_heads": nc.num_key_value_heads,
        "max_position_embeddings": nc.max_position_embeddings,
        "norm_eps": nc.rms_norm_eps,
        "rope_theta": nc.rope_parameters["rope_theta"],
        "rope_scaling": _rope_scaling_from(nc),
        "tie_word_embeddings": bool(nc.tie_word_embeddings),
        "initializer_range": nc.initializer_range,
        "bos_token_id": nc.bos_token_id,
        "eos_token_id": nc.eos_token_id,
        "pad_token_id": nc.pad_token_id,
        "attention_type": "gqa" if nc.num_key_value_heads != nc.num_attention_heads else "mha",
        "attention_chunk_size": None,
        "sliding_window": None,
        "use_moe": False,
        "use_peer": False,
        "norm_type": "rmsnorm",
        "position_type": "rope",
    }
    if arch != DEEPSEEK_V3:
        fields["head_dim"] = getattr(nc, "head_dim", None)
    if arch == MISTRAL:
        fields["sliding_window"] = nc.sliding_window
    if arch == DEEPSEEK_V3:
        fields.update(
            attention_type="mla",
            num_kv_heads=nc.num_attention_heads,
            q_lora_rank=nc.q_lora_rank,
            kv_lora_rank=nc.kv_lora_rank,
            qk_rope_head_dim=nc.qk_rope_head_dim,
            qk_nope_head_dim=nc.qk_nope_head_dim,
            v_head_dim=nc.v_head_dim,
        )
    if arch in (DEEPSEEK_V3, GLM4_MOE):
        fields.update(
            use_moe=nc.first_k_dense_replace < nc.num_hidden_layers,
            num_experts=nc.n_routed_experts,
            num_experts_per_tok=nc.num_experts_per_tok,
            moe_layer_freq=1,
            first_k_dense_replace=nc.first_k_dense_replace,
            num_shared_experts=nc.n_shared_experts,
            moe_intermediate_size=nc.moe_intermediate_size,
            router_scoring="sigmoid",
            norm_topk_prob=bool(nc.norm_topk_prob),
            routed_scaling_factor=nc.routed_scaling_factor,
        )
    return fields


def _check_reversible(nc, arch: str) -> None:
    problems = []
    if arch not in (LLAMA, MISTRAL, DEEPSEEK_V3, GLM4_MOE):
        problems.append(f"{arch} (only Llama, Mistral, DeepseekV3 and Glm4Moe convert back)")
    if getattr(nc, "attention_bias", False) or getattr(nc, "mlp_bias", False):
        problems.append("linear biases")
    if getattr(nc, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={nc.hidden_act!r}")
    if arch == DEEPSEEK_V3 and nc.rope_interleave:
        problems.append("rope_interleave=True (our MLA uses the rotate-half layout)")
    if arch in (DEEPSEEK_V3, GLM4_MOE) and (nc.n_group or 1) > 1 and (nc.topk_group or 1) < nc.n_group:
        problems.append(f"group-limited routing (n_group={nc.n_group}, topk_group={nc.topk_group})")
    if arch == GLM4_MOE and (
        getattr(nc, "use_qk_norm", False) or nc.rope_parameters.get("partial_rotary_factor", 1.0) != 1.0
    ):
        problems.append("Glm4Moe qk-norm or partial rotary embedding")
    if problems:
        raise ValueError("cannot convert to XoronForCausalLM: " + "; ".join(problems))


def from_native(path: str | os.PathLike):
    """Load a native Llama/Mistral/DeepseekV3/Glm4Moe directory as a XoronForCausalLM.

    The native class loads the files (so transformers handles its own on-disk formats, e.g.
    per-expert MoE weights), then its state dict is copied into ours with strict key checks.
    """
    from transformers import AutoModelForCausalLM

    from xoron_pipelines.model.config import XoronConfig
    from xoron_pipelines.model.model import XoronForCausalLM

    raw = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    arch = (raw.get("architectures") or [""])[0]
    native = AutoModelForCausalLM.from_pretrained(path)
    nc = native.config
    _check_reversible(nc, arch)
    dtype = next(native.parameters()).dtype
    model = XoronForCausalLM(XoronConfig(**_xoron_fields(nc, arch))).to(dtype)
    sd = native.state_dict()
    ours = model.state_dict()
    missing = [k for k in ours if k not in sd and k.endswith("weight")]
    if missing:
        raise ValueError(f"native checkpoint lacks {missing[:5]}")
    model.load_state_dict({k: sd.get(k, v) for k, v in ours.items()}, strict=True)
    return model.eval()
