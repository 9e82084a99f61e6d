"""XoronConfig: one transformers config for every architecture path of the Xoron LLM.

Field names are shared by all model modules: dense (Llama-like),
MLA (DeepSeek-V2/V3), MoE (DeepSeek-V3 aux-loss-free), PEER (product-key experts), chunked
("ring") attention, sliding window, RoPE with linear / YaRN scaling.

The defaults are seed 000's ``XoronConfig()`` LLM (hidden 1024, 12 layers, 16 heads, vocab
151643, 128K context with YaRN, ring attention chunk 4096, 8 experts top-2 every 2nd layer with a
shared expert and aux-loss-free balancing, MLA). Small models come from :mod:`.presets`.

Every field is checked in :meth:`XoronConfig.validate` (called from ``__init__``); a value that
cannot build raises ``ValueError`` naming the field, e.g.
``XoronConfig.num_heads=12 does not divide hidden_size=1000``.

Seed aliases are accepted as constructor keywords: transformers names (``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``rms_norm_eps``/``layer_norm_eps``), seed 000
(``use_ring_attention``, ``ring_attention_chunk_size``, ``use_shared_expert``,
``use_aux_lossless``), seed 001 (``d_model``, ``n_layers``, ``n_heads``, ``d_ff``, ``max_seq_len``,
``use_rmsnorm``, ``use_rope``) and seed 002 (nested ``peer_config`` / ``mla_config``).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, field_validator
from transformers import PretrainedConfig

from xoron_pipelines.model.presets import PRESETS
from xoron_pipelines.validation import StrictModel

# Field -> default. Order is the order used in docs and in ``to_dict``.
DEFAULTS: dict[str, Any] = {
    # core
    "hidden_size": 1024,
    "num_layers": 12,
    "num_heads": 16,
    "num_kv_heads": None,  # None -> num_heads (mha)
    "head_dim": None,  # None -> hidden_size // num_heads
    "intermediate_size": 2048,
    "vocab_size": 151643,
    "max_position_embeddings": 131072,
    "norm_type": "rmsnorm",
    "norm_eps": 1e-6,
    "position_type": "rope",
    "rope_theta": 10000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.0,
    },
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    # attention
    "attention_type": "mla",
    "q_lora_rank": 512,
    "kv_lora_rank": 256,
    "qk_rope_head_dim": 32,
    "qk_nope_head_dim": 64,
    "v_head_dim": 64,
    "attention_chunk_size": 4096,
    "sliding_window": None,
    # MoE
    "use_moe": True,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_layer_freq": 2,
    "first_k_dense_replace": 0,
    "num_shared_experts": 1,
    "moe_intermediate_size": None,  # None -> intermediate_size
    "router_scoring": "sigmoid",
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.0,
    "bias_update_rate": 1e-3,
    "aux_loss_coef": 0.0,
    # PEER
    "use_peer": False,
    "peer_num_experts": 1024 * 1024,
    "peer_product_key_dim": [1024, 1024],
    "peer_num_experts_per_tok": 16,
    "peer_num_heads": 8,
    "peer_query_dim": 256,
    "peer_expert_hidden_size": 1,
    "peer_batch_norm_query": True,
    "peer_start_layer": 2,
    "peer_usage_threshold": 5.0,
    "peer_log_expert_usage": True,  # the trainer logs PEER usage (seed 002's log_expert_usage) ...
    "peer_log_freq": 1,  # ... every this many steps (at logging steps; seed 002's log_freq)
    # runtime
    "kernels": "auto",
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "norm_type": ("rmsnorm", "layernorm"),
    "position_type": ("rope", "learned"),
    "attention_type": ("mha", "gqa", "mla"),
    "router_scoring": ("sigmoid", "softmax"),
    "kernels": ("auto", "triton", "torch"),
}

ROPE_SCALING_KEYS = (
    "type",
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
)

# alias -> canonical field (simple renames)
_RENAMES: dict[str, str] = {
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "rms_norm_eps": "norm_eps",
    "layer_norm_eps": "norm_eps",
    "n_routed_experts": "num_experts",
    "n_shared_experts": "num_shared_experts",
    "ring_attention_chunk_size": "attention_chunk_size",
    "d_model": "hidden_size",
    "n_layers": "num_layers",
    "n_heads": "num_heads",
    "d_ff": "intermediate_size",
    "max_seq_len": "max_position_embeddings",
}
_PEER_KEYS = {  # seed 002 peer_config keys -> fields
    "num_experts": "peer_num_experts",
    "num_experts_per_tok": "peer_num_experts_per_tok",
    "num_heads": "peer_num_heads",
    "expert_hidden_size": "peer_expert_hidden_size",
    "product_key_dim": "peer_product_key_dim",
    "query_dim": "peer_query_dim",
    "batch_norm_query": "peer_batch_norm_query",
    "usage_threshold": "peer_usage_threshold",
    "log_expert_usage": "peer_log_expert_usage",
    "log_freq": "peer_log_freq",
}


def normalise_aliases(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Translate seed / transformers aliases into canonical field names (returns a new dict)."""
    out = dict(kwargs)
    for alias, field in _RENAMES.items():
        if alias in out:
            value = out.pop(alias)
            if field in out and out[field] != value:
                raise ValueError(f"XoronConfig.{alias}={value!r} conflicts with {field}={out[field]!r}")
            out[field] = value
    if "use_ring_attention" in out:
        if not out.pop("use_ring_attention"):
            out["attention_chunk_size"] = None
        elif out.get("attention_chunk_size", DEFAULTS["attention_chunk_size"]) is None:
            out["attention_chunk_size"] = 4096
    if "use_shared_expert" in out:
        out["num_shared_experts"] = 1 if out.pop("use_shared_expert") else 0
    if "use_aux_lossless" in out:
        if out.pop("use_aux_lossless"):
            out.setdefault("aux_loss_coef", 0.0)
        else:
            out["bias_update_rate"] = 0.0
            out.setdefault("aux_loss_coef", 0.01)
    if "use_rmsnorm" in out:
        out["norm_type"] = "rmsnorm" if out.pop("use_rmsnorm") else "layernorm"
    if "use_rope" in out:
        out["position_type"] = "rope" if out.pop("use_rope") else "learned"
    if isinstance(out.get("peer_config"), dict):
        for key, value in out.pop("peer_config").items():
            if key not in _PEER_KEYS:
                raise ValueError(f"XoronConfig.peer_config.{key} is not a known PEER setting ({sorted(_PEER_KEYS)})")
            out[_PEER_KEYS[key]] = value
    if isinstance(out.get("mla_config"), dict):
        mla = dict(out.pop("mla_config"))
        if "rope_theta" in mla:
            out["rope_theta"] = mla.pop("rope_theta")
        out["attention_type"] = "mla"
        out.update(mla)
    return out


class XoronConfig(PretrainedConfig):
    """Configuration of :class:`~xoron_pipelines.model.model.XoronForCausalLM` (see module docstring)."""

    model_type = "xoron"
    # transformers names read/write our fields (LlamaConfig-style access for other libraries)
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "num_key_value_heads": "num_kv_heads",
        "rms_norm_eps": "norm_eps",
    }
    # shadows PreTrainedConfig's deprecated ``rope_scaling`` property: ours is a plain field
    rope_scaling = None

    def __init__(self, **kwargs: Any) -> None:
        kwargs = normalise_aliases(kwargs)
        for name, default in DEFAULTS.items():
            value = kwargs.pop(name, default)
            if isinstance(value, (dict, list)):
                value = type(value)(value)
            setattr(self, name, value)
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        super().__init__(**kwargs)
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def attn_head_dim(self) -> int:
        """Per-head q/k size for mha/gqa (``head_dim`` or ``hidden_size // num_heads``)."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def rope_dim(self) -> int:
        """Number of rotated dimensions per head: qk_rope_head_dim for MLA, the head size otherwise."""
        return self.qk_rope_head_dim if self.attention_type == "mla" else self.attn_head_dim

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    def ffn_type(self, layer_idx: int) -> str:
        """FFN kind of layer ``layer_idx``: "peer", "moe" (DeepSeek rule) or "dense"."""
        if self.use_peer and layer_idx >= self.peer_start_layer:
            return "peer"
        if self.use_moe and layer_idx >= self.first_k_dense_replace and layer_idx % self.moe_layer_freq == 0:
            return "moe"
        return "dense"

    # ------------------------------------------------------------------ validation
    def _fail(self, msg: str) -> None:
        raise ValueError(f"XoronConfig.{msg}")

    def _positive(self, *names: str, allow_none: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                self._fail(f"{name}={value!r} must be a positive integer")

    def validate(self) -> None:  # noqa: C901 - a flat list of independent checks reads best
        """Raise ValueError naming the field for any value the model cannot build with
        (after transformers' own config validators)."""
        super().validate()
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                self._fail(f"{name}={getattr(self, name)!r} must be one of {list(choices)}")
        self._positive(
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
        )
        self._positive("head_dim", "attention_chunk_size", "sliding_window", allow_none=True)
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                self._fail(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if not float(self.norm_eps) > 0:
            self._fail(f"norm_eps={self.norm_eps!r} must be > 0")
        if not float(self.rope_theta) > 0:
            self._fail(f"rope_theta={self.rope_theta!r} must be > 0")
        self._validate_attention()
        self._validate_rope_scaling()
        self._validate_moe()
        self._validate_peer()

    def _validate_attention(self) -> None:
        if self.attention_type in ("mha", "gqa"):
            if self.head_dim is None and self.hidden_size % self.num_heads:
                self._fail(f"num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}")
            if self.num_heads % self.num_kv_heads:
                self._fail(f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}")
            if self.attention_type == "mha" and self.num_kv_heads != self.num_heads:
                self._fail(
                    f"num_kv_heads={self.num_kv_heads} must equal num_heads={self.num_heads} for "
                    "attention_type='mha' (use 'gqa')"
                )
            if self.position_type == "rope" and self.attn_head_dim % 2:
                self._fail(f"head_dim={self.attn_head_dim} must be even for rotary embeddings")
            return
        self._positive("kv_lora_rank", "qk_rope_head_dim", "v_head_dim")
        self._positive("q_lora_rank", allow_none=True)
        if not isinstance(self.qk_nope_head_dim, int) or self.qk_nope_head_dim < 0:
            self._fail(f"qk_nope_head_dim={self.qk_nope_head_dim!r} must be an integer >= 0")
        # The latent must actually compress: the cached vector is smaller than the hidden state.
        if self.kv_lora_rank >= self.hidden_size:
            self._fail(
                f"kv_lora_rank={self.kv_lora_rank} must be smaller than hidden_size={self.hidden_size} "
                "(the MLA latent has to compress the hidden state)"
            )
        if self.qk_rope_head_dim % 2:
            self._fail(f"qk_rope_head_dim={self.qk_rope_head_dim} must be even for rotary embeddings")
        if self.num_kv_heads != self.num_heads:
            self._fail(
                f"num_kv_heads={self.num_kv_heads} must equal num_heads={self.num_heads} for "
                "attention_type='mla' (MLA shares one latent across all heads)"
            )

    def _validate_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict):
            self._fail(f"rope_scaling={rs!r} must be None or a dict")
        unknown = set(rs) - set(ROPE_SCALING_KEYS) - {"rope_type"}
        if unknown:
            self._fail(f"rope_scaling.{sorted(unknown)[0]} is unknown (allowed: {list(ROPE_SCALING_KEYS)})")
        kind = rs.get("type", rs.get("rope_type"))
        if kind not in ("linear", "yarn"):
            self._fail(f"rope_scaling.type={kind!r} must be 'linear' or 'yarn'")
        if self.position_type != "rope":
            self._fail("rope_scaling requires position_type='rope'")
        factor = rs.get("factor")
        if not isinstance(factor, (int, float)) or factor < 1:
            self._fail(f"rope_scaling.factor={factor!r} must be a number >= 1")
        if kind == "yarn":
            omp = rs.get("original_max_position_embeddings")
            if not isinstance(omp, int) or omp <= 0:
                self._fail(
                    f"rope_scaling.original_max_position_embeddings={omp!r} must be a positive integer "
                    "(the pre-extension context length) for YaRN"
                )
            fast, slow = rs.get("beta_fast", 32.0), rs.get("beta_slow", 1.0)
            if not 0 < slow < fast:
                self._fail(f"rope_scaling.beta_fast={fast!r} must be > beta_slow={slow!r} > 0")

    def _validate_moe(self) -> None:
        if not self.use_moe:
            return
        self._positive("num_experts", "num_experts_per_tok", "moe_layer_freq")
        self._positive("moe_intermediate_size", allow_none=True)
        if self.num_experts_per_tok > self.num_experts:
            self._fail(f"num_experts_per_tok={self.num_experts_per_tok} exceeds num_experts={self.num_experts}")
        for name in ("first_k_dense_replace", "num_shared_experts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                self._fail(f"{name}={value!r} must be an integer >= 0")
        for name in ("bias_update_rate", "aux_loss_coef"):
            if float(getattr(self, name)) < 0:
                self._fail(f"{name}={getattr(self, name)!r} must be >= 0")
        if not float(self.routed_scaling_factor) > 0:
            self._fail(f"routed_scaling_factor={self.routed_scaling_factor!r} must be > 0")

    def _validate_peer(self) -> None:
        if not self.use_peer:
            return
        self._positive(
            "peer_num_experts",
            "peer_num_experts_per_tok",
            "peer_num_heads",
            "peer_query_dim",
            "peer_expert_hidden_size",
            "peer_log_freq",
        )
        if not isinstance(self.peer_log_expert_usage, bool):
            self._fail(f"peer_log_expert_usage={self.peer_log_expert_usage!r} must be true or false")
        dims = self.peer_product_key_dim
        if not (isinstance(dims, (list, tuple)) and len(dims) == 2 and all(isinstance(d, int) and d > 0 for d in dims)):
            self._fail(f"peer_product_key_dim={dims!r} must be two positive integers [n0, n1]")
        self.peer_product_key_dim = list(dims)
        if math.prod(dims) != self.peer_num_experts:
            self._fail(
                f"peer_product_key_dim={list(dims)} multiplies to {math.prod(dims)}, "
                f"not peer_num_experts={self.peer_num_experts}"
            )
        if self.peer_num_experts_per_tok > min(dims):
            self._fail(
                f"peer_num_experts_per_tok={self.peer_num_experts_per_tok} exceeds the smaller "
                f"sub-key table ({min(dims)}) of peer_product_key_dim"
            )
        if self.peer_query_dim % 2:
            self._fail(f"peer_query_dim={self.peer_query_dim} must be even (split into two sub-queries)")
        if not isinstance(self.peer_start_layer, int) or not 0 <= self.peer_start_layer < self.num_layers:
            self._fail(f"peer_start_layer={self.peer_start_layer!r} must be in [0, num_layers={self.num_layers})")
        if not float(self.peer_usage_threshold) > 0:
            self._fail(f"peer_usage_threshold={self.peer_usage_threshold!r} must be > 0")


# ---------------------------------------------------------------------- conf/ schema
def _check_numbers(values: dict[str, Any], where: str) -> None:
    """The strict-number rules of the other parameter groups for the free-form overrides: no
    inf / nan anywhere, no boolean for a field whose default is a number."""
    for key, value in values.items():
        name = f"{where}.{key}"
        if isinstance(value, dict):
            _check_numbers(value, name)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number, got {value!r}")
        default = DEFAULTS.get(_RENAMES.get(key, key))
        if isinstance(value, bool) and isinstance(default, (int, float)) and not isinstance(default, bool):
            raise ValueError(f"{name}: must be a number, got the boolean {value!r}")


def get_config(name: str, **overrides: Any) -> XoronConfig:
    """Build the XoronConfig of preset ``name`` (:data:`~xoron_pipelines.model.presets.PRESETS`)
    with ``overrides`` applied on top (fields or aliases)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return XoronConfig(**{**PRESETS[name], **normalise_aliases(overrides)})


class ModelParams(StrictModel):
    """``conf/base/parameters_model.yml``: ``model: {preset, overrides}``.

    ``overrides`` may hold any XoronConfig field (or seed alias); the config is actually built so
    impossible combinations fail here, naming ``model.overrides.<field>``.
    """

    preset: str = "nano"
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; choose one of {sorted(PRESETS)}")
        return value

    @field_validator("overrides")
    @classmethod
    def _buildable(cls, value: dict[str, Any], info) -> dict[str, Any]:
        known = (
            set(DEFAULTS)
            | set(_RENAMES)
            | {
                "use_ring_attention",
                "use_shared_expert",
                "use_aux_lossless",
                "use_rmsnorm",
                "use_rope",
                "peer_config",
                "mla_config",
            }
        )
        for key in value:
            if key not in known:
                raise ValueError(f"model.overrides.{key} is not an XoronConfig field")
        _check_numbers(value, "model.overrides")
        preset = info.data.get("preset")
        if preset is None:  # preset already failed; its error is reported
            return value
        try:
            get_config(preset, **value)
        except ValueError as exc:
            msg = str(exc)
            field = msg.split("=", 1)[0].removeprefix("XoronConfig.").split(" ", 1)[0]
            raise ValueError(f"model.overrides.{field}: {msg}") from None
        return value

    def build(self) -> XoronConfig:
        """The XoronConfig these parameters describe."""
        return get_config(self.preset, **self.overrides)
