"""GGUF export (f16 / q8_0) that llama.cpp itself loads and runs.

The file follows what llama.cpp's ``convert_hf_to_gguf.py`` writes for the native
architecture our model maps to; names come from ``gguf.constants`` (``MODEL_ARCH``,
``TENSOR_NAMES`` via ``gguf.get_tensor_name_map``, the ``GGUFWriter.add_*`` keys), never from
string literals:

=======================================  ==============  =========================================
our architecture                         GGUF arch       notes
=======================================  ==============  =========================================
dense, MHA/GQA (-> Llama)                ``llama``       q/k rows permuted to llama.cpp's
                                                         interleaved RoPE (``LlamaModel.permute``)
MLA, dense or MoE (-> DeepseekV3)        ``deepseek2``   ``kv_b_proj`` split into ``attn_k_b``
                                                         (transposed) / ``attn_v_b`` as
                                                         ``DeepseekV2Model``; rope rows interleaved
MoE + MHA/GQA, sigmoid (-> Glm4Moe)      ``glm4moe``     NEOX RoPE (no permute), selection bias
                                                         as ``exp_probs_b``
MoE + MHA/GQA, softmax (-> Qwen2Moe)     ``glm4moe``     gating func SOFTMAX (see below)
PEER, LayerNorm, learned positions       none            :func:`unsupported_features` names them
=======================================  ==============  =========================================

Why not ``qwen2moe`` for the softmax router: llama.cpp's qwen2moe graph computes the shared
expert gate as ``silu(x) / x``, which is 0/0 = NaN for the zero gate the exact conversion needs,
and it ignores ``norm_topk_prob``. ``glm4moe`` reads the gating function, top-k normalisation,
routed scaling and selection bias from the file, so it reproduces both routers exactly.

Layers: ``deepseek2`` / ``glm4moe`` make every layer from ``leading_dense_block_count`` on an
MoE block; a dense layer after the first MoE layer is written as a block whose routed experts
are zero (they add exactly 0) and whose shared expert is the dense MLP, zero-padded to the common
shared width (padded units add silu(0) * 0 = 0) -- the same mapping as the transformers export.

Tensor types follow convert_hf_to_gguf: 1-d tensors, norms, router weights and biases stay F32;
q8_0 falls back to f16 for a tensor whose rows are not a multiple of 32 (as convert does).

Tokenizer: a byte-level BPE with the GPT-2 pre-tokenizer regex (ours) becomes
``tokenizer.ggml.model = "gpt2"``, ``pre = "gpt-2"``, the token list in id order (ids beyond the
tokenizer padded as ``[PAD<i>]`` UNUSED), token types (CONTROL for special tokens), merges,
bos/eos/pad/unk ids, the end-of-turn id as ``eot`` (llama.cpp stops at EOS and EOT), and the
tokenizer's behaviour of the HF export (:func:`~xoron_pipelines.export.tokenizer.export_tokenizer`):
``add_bos_token`` true -- every training row starts with BOS -- and the chat template that renders
it (``gguf.SpecialVocab``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf.constants import MODEL_ARCH, MODEL_ARCH_NAMES, GGMLQuantizationType, LlamaFileType
from tqdm.auto import tqdm

from xoron_pipelines.atomic import atomic_file
from xoron_pipelines.export.tokenizer import end_of_turn_id, export_tokenizer
from xoron_pipelines.model import interop

logger = logging.getLogger(__name__)

#: transformers class chosen by interop -> llama.cpp architecture
GGUF_ARCH: dict[str, MODEL_ARCH] = {
    interop.LLAMA: MODEL_ARCH.LLAMA,
    interop.DEEPSEEK_V3: MODEL_ARCH.DEEPSEEK2,
    interop.GLM4_MOE: MODEL_ARCH.GLM4_MOE,
    interop.QWEN2_MOE: MODEL_ARCH.GLM4_MOE,
}
#: archs whose llama.cpp RoPE is the interleaved ("NORM") layout: rotate-half rows get permuted
_INTERLEAVED_ROPE = (MODEL_ARCH.LLAMA, MODEL_ARCH.DEEPSEEK2)
QTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
#: router weights stay F32 (convert_hf_to_gguf / llama_model_quantize): ".ffn_gate_inp.weight"
_F32_SUFFIXES = tuple(
    "." + gguf.TENSOR_NAMES[k].rsplit(".", 1)[-1] + ".weight"
    for k in (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP)
)


# --------------------------------------------------------------------------- what can be written
def gguf_architecture(config) -> MODEL_ARCH | None:
    """The llama.cpp architecture for ``config`` (None when there is none)."""
    return GGUF_ARCH.get(interop.native_architecture(config) or "")


def _yarn_problems(config, arch: MODEL_ARCH) -> list[str]:
    rs = config.rope_scaling or {}
    if rs.get("type", rs.get("rope_type")) != "yarn" or arch != MODEL_ARCH.DEEPSEEK2:
        return []
    mscale, all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    if not all_dim or float(mscale or 1.0) != float(all_dim):
        return [
            f"YaRN with mscale={mscale}, mscale_all_dim={all_dim} on MLA (llama.cpp's deepseek2 "
            "reproduces DeepSeek's YaRN temperature only when mscale == mscale_all_dim)"
        ]
    return []


def unsupported_features(config) -> list[str]:
    """Every feature of ``config`` that a llama.cpp GGUF cannot represent exactly (empty = OK)."""
    target = interop.native_architecture(config)
    arch = GGUF_ARCH.get(target or "")
    if arch is None:
        return interop.unsupported_features(config) or [f"no llama.cpp architecture for {target}"]
    problems = []
    if config.sliding_window:
        problems.append(
            f"sliding_window={config.sliding_window} (llama.cpp's {MODEL_ARCH_NAMES[arch]} "
            "graph has no sliding-window attention)"
        )
    if target == interop.QWEN2_MOE:  # written as glm4moe: the GLM checks minus the router type
        problems += [
            p
            for p in interop.unsupported_features(config, interop.GLM4_MOE)
            if not p.startswith("router_scoring") and not p.startswith("sliding_window")
        ]
    else:
        problems += [p for p in interop.unsupported_features(config, target) if not p.startswith("sliding_window")]
    return problems + _yarn_problems(config, arch)


def check_exportable(config) -> MODEL_ARCH:
    """The llama.cpp arch for ``config``, or ValueError naming every unsupported feature."""
    problems = unsupported_features(config)
    if problems:
        raise ValueError("cannot export to GGUF (llama.cpp): " + "; ".join(problems))
    return gguf_architecture(config)


# --------------------------------------------------------------------------- tensors
def interleave_rope_rows(w: torch.Tensor, blocks: int, offset: int, rope_dim: int) -> torch.Tensor:
    """Reorder the rotate-half rope rows ``[offset, offset + rope_dim)`` of each of ``blocks``
    equal row blocks into llama.cpp's interleaved layout: new[2j] = old[j], new[2j+1] = old[d/2+j]
    (``LlamaModel.permute`` when the block is all rope)."""
    half = rope_dim // 2
    perm = torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).reshape(-1)
    out = w.reshape(blocks, -1, *w.shape[1:]).clone()
    out[:, offset : offset + rope_dim] = out[:, offset : offset + rope_dim][:, perm]
    return out.reshape(w.shape)


def _lead_dense(config) -> int:
    moe = [i for i in range(config.num_layers) if config.ffn_type(i) == "moe"]
    return moe[0] if moe else config.num_layers


def _shared_count(config) -> int:
    """Shared experts of the native block: wide enough for ours and any emulated dense MLP."""
    size = config.expert_intermediate_size
    need = size * (config.num_shared_experts or 0)
    lead = _lead_dense(config)
    if any(config.ffn_type(i) == "dense" for i in range(lead, config.num_layers)):
        need = max(need, config.intermediate_size)
    return max(1, -(-need // size))


def _padded(mlp: dict[str, torch.Tensor] | None, width: int, hidden: int, like: torch.Tensor) -> dict:
    """A SwiGLU MLP (gate/up/down weights, or none) zero-padded to ``width`` hidden units."""
    out = {
        "gate_proj": like.new_zeros(width, hidden),
        "up_proj": like.new_zeros(width, hidden),
        "down_proj": like.new_zeros(hidden, width),
    }
    if mlp:
        inter = mlp["down_proj"].shape[1]
        out["gate_proj"][:inter], out["up_proj"][:inter] = mlp["gate_proj"], mlp["up_proj"]
        out["down_proj"][:, :inter] = mlp["down_proj"]
    return out


def _mlp(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor] | None:
    if prefix + "down_proj.weight" not in sd:
        return None
    return {p: sd[f"{prefix}{p}.weight"] for p in ("gate_proj", "up_proj", "down_proj")}


def _moe_block(sd, config, i: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Layer ``i``'s FFN as a DeepSeek/GLM MoE block (real or emulated dense), HF-style names."""
    p = f"model.layers.{i}.mlp."
    like = sd["model.embed_tokens.weight"]
    e, h, inter = config.num_experts, config.hidden_size, config.expert_intermediate_size
    width = _shared_count(config) * inter
    if config.ffn_type(i) == "moe":
        gate_up = sd[p + "experts.gate_up_proj"]
        yield p + "gate.weight", sd[p + "gate.weight"]
        yield p + "gate.e_score_correction.bias", sd[p + "gate.e_score_correction_bias"].float()
        yield p + "experts.gate_proj.weight", gate_up[:, :inter]
        yield p + "experts.up_proj.weight", gate_up[:, inter:]
        yield p + "experts.down_proj.weight", sd[p + "experts.down_proj"]
        shared = _padded(_mlp(sd, p + "shared_experts."), width, h, like)
    else:  # dense layer inside the MoE region: zero routed experts, the MLP as shared expert
        yield p + "gate.weight", like.new_zeros(e, h)
        yield p + "gate.e_score_correction.bias", torch.zeros(e)
        yield p + "experts.gate_proj.weight", like.new_zeros(e, inter, h)
        yield p + "experts.up_proj.weight", like.new_zeros(e, inter, h)
        yield p + "experts.down_proj.weight", like.new_zeros(e, h, inter)
        shared = _padded(_mlp(sd, p), width, h, like)
    for part, w in shared.items():
        yield f"{p}shared_experts.{part}.weight", w


def _attention(sd, config, arch: MODEL_ARCH, i: int) -> Iterator[tuple[str, torch.Tensor]]:
    p = f"model.layers.{i}.self_attn."
    if arch == MODEL_ARCH.DEEPSEEK2:
        heads, nope, rope, v = config.num_heads, config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        q_name = "q_proj" if config.q_lora_rank is None else "q_b_proj"
        if config.q_lora_rank is not None:
            yield p + "q_a_proj.weight", sd[p + "q_a_proj.weight"]
            yield p + "q_a_layernorm.weight", sd[p + "q_a_layernorm.weight"]
        yield f"{p}{q_name}.weight", interleave_rope_rows(sd[f"{p}{q_name}.weight"], heads, nope, rope)
        rank = config.kv_lora_rank
        yield p + "kv_a_proj_with_mqa.weight", interleave_rope_rows(sd[p + "kv_a_proj_with_mqa.weight"], 1, rank, rope)
        yield p + "kv_a_layernorm.weight", sd[p + "kv_a_layernorm.weight"]
        kv_b = sd[p + "kv_b_proj.weight"].view(heads, nope + v, rank)
        k_b, v_b = torch.split(kv_b, [nope, v], dim=1)
        yield p + "k_b_proj.weight", k_b.transpose(1, 2).contiguous()  # (heads, rank, nope)
        yield p + "v_b_proj.weight", v_b.contiguous()  # (heads, v, rank)
    else:
        q, k = sd[p + "q_proj.weight"], sd[p + "k_proj.weight"]
        if arch in _INTERLEAVED_ROPE:
            hd = config.attn_head_dim
            q = interleave_rope_rows(q, config.num_heads, 0, hd)
            k = interleave_rope_rows(k, config.num_kv_heads, 0, hd)
        yield p + "q_proj.weight", q
        yield p + "k_proj.weight", k
        yield p + "v_proj.weight", sd[p + "v_proj.weight"]
    yield p + "o_proj.weight", sd[p + "o_proj.weight"]


def hf_named_tensors(model, arch: MODEL_ARCH) -> Iterator[tuple[str, torch.Tensor]]:
    """Our weights under the transformers names convert_hf_to_gguf maps, after its fix-ups."""
    config = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    yield "model.embed_tokens.weight", sd["model.embed_tokens.weight"]
    lead = _lead_dense(config) if arch != MODEL_ARCH.LLAMA else config.num_layers
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", sd[p + "input_layernorm.weight"]
        yield from _attention(sd, config, arch, i)
        yield p + "post_attention_layernorm.weight", sd[p + "post_attention_layernorm.weight"]
        if i < lead:
            for part in ("gate_proj", "up_proj", "down_proj"):
                yield f"{p}mlp.{part}.weight", sd[f"{p}mlp.{part}.weight"]
        else:
            yield from _moe_block(sd, config, i)
    yield "model.norm.weight", sd["model.norm.weight"]
    if not config.tie_word_embeddings:  # tied: llama.cpp falls back to token_embd
        yield "lm_head.weight", sd["lm_head.weight"]


def gguf_tensors(model, arch: MODEL_ARCH) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF tensor name, float32 array) pairs, names from gguf's tensor map for ``arch``."""
    name_map = gguf.get_tensor_name_map(arch, model.config.num_layers)
    for hf_name, tensor in hf_named_tensors(model, arch):
        new = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"no {MODEL_ARCH_NAMES[arch]} GGUF name for tensor {hf_name!r}")
        yield new, tensor.contiguous().numpy().astype(np.float32)


def tensor_type(name: str, data: np.ndarray, want: GGMLQuantizationType) -> GGMLQuantizationType:
    """convert_hf_to_gguf's rule: 1-d, norms, router weights and non-weights stay F32."""
    if data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or name.endswith(_F32_SUFFIXES):
        return GGMLQuantizationType.F32
    return want


def quantize(data: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """``gguf.quants.quantize`` with convert's fallback to F16 for rows q8_0 cannot block."""
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError as exc:
        logger.info("%s; falling back to F16", exc)
        return gguf.quants.quantize(data, GGMLQuantizationType.F16), GGMLQuantizationType.F16


# --------------------------------------------------------------------------- metadata
def _rope_keys(w: gguf.GGUFWriter, config, arch: MODEL_ARCH) -> None:
    from xoron_pipelines.model.rope import get_mscale, rope_inv_freq

    w.add_rope_freq_base(float(config.rope_theta))
    rs = config.rope_scaling or {}
    kind = rs.get("type", rs.get("rope_type"))
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rs["factor"]))
    elif kind == "yarn":
        factor = float(rs["factor"])
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(int(rs["original_max_position_embeddings"]))
        w.add_rope_scaling_yarn_beta_fast(float(rs.get("beta_fast") or 32.0))
        w.add_rope_scaling_yarn_beta_slow(float(rs.get("beta_slow") or 1.0))
        if arch == MODEL_ARCH.DEEPSEEK2 and rs.get("mscale_all_dim"):
            w.add_rope_scaling_yarn_log_mul(0.1 * float(rs["mscale_all_dim"]))  # convert's legacy 0.1
        elif arch != MODEL_ARCH.DEEPSEEK2:
            # llama.cpp scales cos/sin by get_mscale(factor); ours may use DeepSeek's ratio
            ratio = rope_inv_freq(config)[1] / get_mscale(factor)
            if not math.isclose(ratio, 1.0):
                w.add_key_value(
                    gguf.Keys.Rope.SCALING_ATTN_FACTOR.format(arch=MODEL_ARCH_NAMES[arch]),
                    float(ratio),
                    gguf.GGUFValueType.FLOAT32,
                )


def _moe_keys(w: gguf.GGUFWriter, config, arch: MODEL_ARCH) -> None:
    lead = _lead_dense(config)
    w.add_leading_dense_block_count(lead)
    w.add_expert_feed_forward_length(
        config.expert_intermediate_size if lead < config.num_layers else config.intermediate_size
    )
    if lead == config.num_layers:  # MLA without MoE (deepseek2 reads these keys regardless)
        w.add_expert_shared_count(0)
        return
    w.add_expert_count(config.num_experts)
    w.add_expert_used_count(config.num_experts_per_tok)
    w.add_expert_shared_count(_shared_count(config))
    w.add_expert_group_count(1)
    w.add_expert_group_used_count(1)
    w.add_expert_weights_scale(float(config.routed_scaling_factor))
    w.add_expert_weights_norm(bool(config.norm_topk_prob))
    w.add_expert_gating_func(
        gguf.ExpertGatingFuncType.SIGMOID if config.router_scoring == "sigmoid" else gguf.ExpertGatingFuncType.SOFTMAX
    )


def _hparams(w: gguf.GGUFWriter, config, arch: MODEL_ARCH, ftype: LlamaFileType) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_block_count(config.num_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_layer_norm_rms_eps(float(config.norm_eps))
    w.add_vocab_size(config.vocab_size)
    w.add_file_type(ftype)
    _rope_keys(w, config, arch)
    if arch == MODEL_ARCH.DEEPSEEK2:
        w.add_head_count_kv(1)  # MLA is written as MQA over the latent
        w.add_q_lora_rank(config.q_lora_rank or 0)
        w.add_kv_lora_rank(config.kv_lora_rank)
        w.add_key_length(config.kv_lora_rank + config.qk_rope_head_dim)
        w.add_value_length(config.kv_lora_rank)
        w.add_key_length_mla(config.qk_nope_head_dim + config.qk_rope_head_dim)
        w.add_value_length_mla(config.v_head_dim)
        w.add_rope_dimension_count(config.qk_rope_head_dim)
    else:
        w.add_head_count_kv(config.num_kv_heads)
        w.add_key_length(config.attn_head_dim)
        w.add_value_length(config.attn_head_dim)
        w.add_rope_dimension_count(config.attn_head_dim)
    if arch != MODEL_ARCH.LLAMA:
        _moe_keys(w, config, arch)


def _check_tokenizer(tokenizer) -> None:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    if (
        model.get("type") != "BPE"
        or pre.get("type") != "ByteLevel"
        or not pre.get("use_regex", True)
        or pre.get("add_prefix_space")
    ):
        raise ValueError(
            "GGUF export supports byte-level BPE tokenizers with the GPT-2 pre-tokenizer "
            f"(model BPE, ByteLevel use_regex, no prefix space); got model={model.get('type')}, "
            f"pre_tokenizer={pre}"
        )


def _vocab(w: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """tokenizer.ggml.*: gpt2 BPE tokens/types/merges, special ids, chat template."""
    _check_tokenizer(tokenizer)
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(reverse) >= vocab_size:
        raise ValueError(f"tokenizer has id {max(reverse)} but the model's vocab_size is {vocab_size}")
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # llama.cpp name of the GPT-2 regex (LLAMA_VOCAB_PRE_TYPE_GPT2)
    w.add_token_list(tokens)
    w.add_token_types(types)
    exported = export_tokenizer(tokenizer)  # the HF export's: adds BOS, chat template with BOS
    with tempfile.TemporaryDirectory() as tmp:
        exported.save_pretrained(tmp)
        vocab = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab_size)
    # every training row starts with BOS (when there is one) and none with EOS: llama.cpp adds the same
    vocab.add_special_token["bos"] = exported.bos_token_id is not None
    vocab.add_special_token["eos"] = False
    eot = end_of_turn_id(exported)
    if eot is not None:  # llama.cpp stops at EOS and at the end of an assistant turn
        vocab.special_token_ids["eot"] = eot
    if getattr(exported, "chat_template", None):
        vocab.chat_template = exported.chat_template
    vocab.add_to_gguf(w, quiet=True)


# --------------------------------------------------------------------------- export
def export_gguf(
    model, path: str | os.PathLike, tokenizer, qtype: str = "f16", name: str | None = None
) -> dict[str, Any]:
    """Write ``model`` (+ ``tokenizer``) as a llama.cpp GGUF at ``path`` atomically.

    Raises ValueError naming every unsupported feature before anything is written.
    Returns a summary: architecture, tensor count and types, file size.
    """
    if qtype not in QTYPES:
        raise ValueError(f"GGUF type {qtype!r} not supported; choose from {sorted(QTYPES)}")
    arch = check_exportable(model.config)
    _check_tokenizer(tokenizer)
    want, ftype = QTYPES[qtype]
    counts: dict[str, int] = {}
    path = Path(path)
    with atomic_file(path) as tmp:
        w = gguf.GGUFWriter(tmp, MODEL_ARCH_NAMES[arch])
        w.add_name(name or path.stem)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _hparams(w, model.config, arch, ftype)
        _vocab(w, tokenizer, model.config.vocab_size)
        with torch.no_grad():
            tensors = list(gguf_tensors(model, arch))
        for tname, data in tqdm(tensors, desc=f"gguf {qtype}", leave=False):
            packed, used = quantize(data, tensor_type(tname, data, want))
            w.add_tensor(tname, packed, raw_dtype=used)
            counts[used.name] = counts.get(used.name, 0) + 1
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    logger.info("wrote %s GGUF (%s, %d tensors) to %s", MODEL_ARCH_NAMES[arch], qtype, len(tensors), path)
    return {
        "path": str(path),
        "architecture": MODEL_ARCH_NAMES[arch],
        "type": qtype,
        "tensors": len(tensors),
        "tensor_types": counts,
        "bytes": path.stat().st_size,
    }


__all__ = [
    "GGUF_ARCH",
    "QTYPES",
    "check_exportable",
    "export_gguf",
    "gguf_architecture",
    "gguf_tensors",
    "hf_named_tensors",
    "interleave_rope_rows",
    "quantize",
    "tensor_type",
    "unsupported_features",
]
