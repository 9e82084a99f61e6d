"""XoronModel / XoronForCausalLM: decoder-only transformer over dense, MoE and PEER FFNs.

Module and parameter names mirror transformers' Llama / DeepseekV3 (see the interop module), so
conversion to native classes is a config mapping plus an identity state dict where one exists.

Loss: next-token cross-entropy (``labels`` shifted by one inside, ``-100`` ignored) with optional
per-token ``loss_weights`` aligned with ``labels`` (the weight of position t applies to predicting
``labels[:, t]``): ``sum(w * ce) / sum(w)`` over non-ignored targets. It runs through
``kernels.fused_linear_cross_entropy`` on the final hidden states, so with ``return_logits=False``
the (tokens x vocab) logits are never materialised. MoE auxiliary losses are added to it.

Weights are saved and loaded as safetensors only; pickle checkpoints are refused.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast

from xoron_pipelines import kernels
from xoron_pipelines.model.attention import KVCache, build_attention
from xoron_pipelines.model.config import XoronConfig
from xoron_pipelines.model.mlp import MLP
from xoron_pipelines.model.moe import MoE
from xoron_pipelines.model.norm import build_norm
from xoron_pipelines.model.peer import PEER
from xoron_pipelines.model.rope import RotaryEmbedding, rope_inv_freq

logger = logging.getLogger(__name__)


def build_ffn(config: XoronConfig, layer_idx: int) -> nn.Module:
    """Dense MLP, MoE or PEER for layer ``layer_idx`` (``config.ffn_type``)."""
    kind = config.ffn_type(layer_idx)
    if kind == "peer":
        return PEER(config, layer_idx)
    if kind == "moe":
        return MoE(config, layer_idx)
    return MLP(config)


class XoronDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)); residual dropout."""

    def __init__(self, config: XoronConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = build_attention(config, layer_idx)
        self.mlp = build_ffn(config, layer_idx)
        self.input_layernorm = build_norm(config)
        self.post_attention_layernorm = build_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden, position_embeddings=None, key_valid=None, past_key_values=None):
        attn = self.self_attn(self.input_layernorm(hidden), position_embeddings, key_valid, past_key_values)
        hidden = hidden + self.dropout(attn)
        return hidden + self.dropout(self.mlp(self.post_attention_layernorm(hidden)))


class XoronPreTrainedModel(PreTrainedModel):
    config_class = XoronConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["XoronDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults (normal(0, initializer_range) linears/embeddings, unit norms), plus
        our own modules: ``reset_parameters()`` where they hold raw parameters (MoE, PEER) not yet
        loaded, rotary tables recomputed, and other non-persistent buffers (usage counters) zeroed.
        From ``from_pretrained`` buffers start on the meta device, so they must be rebuilt here."""
        super()._init_weights(module)
        if isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if not type(module).__module__.startswith("xoron_pipelines."):
            return
        own = list(module.parameters(recurse=False))
        if (
            own
            and hasattr(module, "reset_parameters")
            and not all(getattr(p, "_is_hf_initialized", False) for p in own)
        ):
            module.reset_parameters()
        for name, buf in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                continue
            if isinstance(module, RotaryEmbedding) and name == "inv_freq":
                init.copy_(buf, rope_inv_freq(self.config)[0])
            else:
                init.zeros_(buf)

    def save_pretrained(self, save_directory, *args, safe_serialization: bool = True, **kwargs):
        """Save config.json + model.safetensors; ``safe_serialization=False`` (pickle) is refused."""
        if not safe_serialization:
            raise ValueError("XoronForCausalLM saves safetensors only; pickle (safe_serialization=False) is refused")
        if self.config.use_peer:
            logger.warning(
                "PEER layers have no native transformers class: %s is saved with XoronConfig "
                "(model_type='xoron'); load it with `import xoron_pipelines.model` and "
                "AutoModelForCausalLM / XoronForCausalLM.from_pretrained.",
                save_directory,
            )
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Load from safetensors only (``use_safetensors=False`` is refused)."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("XoronForCausalLM loads safetensors only; use_safetensors=False is refused")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(*args, **kwargs)


class XoronModel(XoronPreTrainedModel):
    """Embeddings, decoder layers and the final norm; returns the last hidden states."""

    def __init__(self, config: XoronConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(XoronDecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = build_norm(config)
        self.rotary_emb = RotaryEmbedding(config) if config.position_type == "rope" else None
        self.dropout = nn.Dropout(config.dropout)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _positions(self, attention_mask, position_ids, past_len: int, tlen: int, device) -> torch.Tensor:
        if position_ids is not None:
            return position_ids
        if attention_mask is not None:  # left padding: count real tokens only
            return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -tlen:]
        return torch.arange(past_len, past_len + tlen, device=device)[None]

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache: bool = False,
        inputs_embeds=None,
        **_: Any,
    ) -> MoeModelOutputWithPast:
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        bsz, tlen = hidden.shape[:2]
        if use_cache and past_key_values is None:
            past_key_values = KVCache(self.config.num_layers)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is not None and attention_mask.shape[-1] != past_len + tlen:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions; expected cached "
                f"{past_len} + new {tlen} = {past_len + tlen}"
            )
        position_ids = self._positions(attention_mask, position_ids, past_len, tlen, hidden.device)
        if int(position_ids.max()) >= self.config.max_position_embeddings and self.rotary_emb is None:
            raise ValueError(
                f"position {int(position_ids.max())} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings} of the learned position table"
            )
        key_valid = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        position_embeddings = None
        if self.rotary_emb is not None:
            position_embeddings = self.rotary_emb(position_ids, hidden.dtype)
        else:
            hidden = hidden + self.embed_positions(position_ids)
        hidden = self.dropout(hidden)
        for layer in self.layers:
            hidden = layer(hidden, position_embeddings, key_valid, past_key_values=past_key_values)
        return MoeModelOutputWithPast(last_hidden_state=self.norm(hidden), cache=past_key_values)


class XoronForCausalLM(XoronPreTrainedModel):
    """Causal LM head over :class:`XoronModel` (``lm_head`` tied to ``embed_tokens`` when configured)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: XoronConfig) -> None:
        super().__init__(config)
        self.model = XoronModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # ------------------------------------------------------------------ forward / loss
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        labels=None,
        loss_weights=None,
        past_key_values=None,
        use_cache: bool = False,
        return_logits: bool = True,
        inputs_embeds=None,
        **_: Any,
    ) -> MoeCausalLMOutputWithPast:
        out = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
        )
        hidden = out.last_hidden_state
        aux = self.aux_loss(hidden)
        loss = None
        if labels is not None:
            loss = self.lm_loss(hidden, labels, loss_weights) + aux
        logits = self.lm_head(hidden) if (return_logits or labels is None) else None
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux, logits=logits, cache=out.cache)

    def lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor, loss_weights=None) -> torch.Tensor:
        """Weighted next-token CE from hidden states (B, T, H) via the fused kernel."""
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        targets = labels[:, 1:].reshape(-1).to(hidden.device)
        weights = None if loss_weights is None else loss_weights[:, 1:].reshape(-1).to(hidden.device, torch.float32)
        return kernels.fused_linear_cross_entropy(
            h, self.lm_head.weight, targets, loss_weights=weights, ignore_index=-100, impl=self.config.kernels
        )

    def aux_loss(self, like: torch.Tensor) -> torch.Tensor:
        """Sum of the MoE layers' auxiliary losses from the last forward (0 without any)."""
        total = like.new_zeros((), dtype=torch.float32)
        for layer in self.model.layers:
            extra = getattr(layer.mlp, "aux_loss", None)
            if isinstance(layer.mlp, MoE) and isinstance(extra, torch.Tensor):
                total = total + extra.float().to(total.device)  # layers may sit on other GPUs (device_map)
        return total

    def placement_parts(self) -> dict[str, list[nn.Module]]:
        """The parts a device map places (:mod:`xoron_pipelines.model.placement`), in forward order:
        ``embed`` (token / position embeddings, rotary tables), ``layers.<i>`` per decoder layer, and
        ``head`` (final norm + ``lm_head``, which read the same hidden states)."""
        base = self.model
        optional = (base.embed_tokens, getattr(base, "embed_positions", None), base.rotary_emb)
        embed = [m for m in optional if m is not None]
        parts: dict[str, list[nn.Module]] = {"embed": embed}
        parts.update({f"layers.{i}": [layer] for i, layer in enumerate(base.layers)})
        parts["head"] = [base.norm, self.lm_head]
        return parts

    # ------------------------------------------------------------------ trainer pass-throughs
    def _ffn_layers(self, kind: type) -> dict[int, nn.Module]:
        return {i: layer.mlp for i, layer in enumerate(self.model.layers) if isinstance(layer.mlp, kind)}

    def update_moe_bias(self) -> None:
        """Aux-loss-free balancing step of every MoE layer (call after each optimizer step)."""
        for moe in self._ffn_layers(MoE).values():
            moe.update_bias()

    def expert_load(self) -> dict[int, torch.Tensor]:
        """Per MoE layer: fraction of routed tokens per expert."""
        return {i: moe.expert_load() for i, moe in self._ffn_layers(MoE).items()}

    def peer_hot_experts(self, threshold: float | None = None) -> dict[int, int]:
        """Per PEER layer: experts used more than ``threshold`` x mean (default peer_usage_threshold)."""
        thr = self.config.peer_usage_threshold if threshold is None else threshold
        return {i: int(peer.hot_experts(thr)) for i, peer in self._ffn_layers(PEER).items()}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loading, plus the directory's ``generation_config.json`` (when it has one)
        as ``generation_config``: transformers loads it only for ``GenerationMixin`` models, and
        our :meth:`generate` takes its defaults (stop ids, ``max_new_tokens``) from there."""
        from transformers import GenerationConfig

        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        try:
            model.generation_config = GenerationConfig.from_pretrained(
                pretrained_model_name_or_path, local_files_only=kwargs.get("local_files_only", False)
            )
        except OSError:  # no generation_config.json: the config's ids stay the defaults
            pass
        return model

    def generate(self, input_ids, **kwargs):
        """KV-cached greedy / sampled decoding; see :func:`xoron_pipelines.model.generation.generate`."""
        from xoron_pipelines.model.generation import generate

        return generate(self, input_ids, **kwargs)
