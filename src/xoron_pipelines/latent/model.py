"""The latent-space model (seed 004): encoder -> compression -> middle transformer -> prefix
adapter -> decoder LM.

* :class:`TrainableEncoder` -- a local Hugging Face encoder (default: the packaged MiniLM) with
  mean pooling; only its top ``num_encoder_unfrozen_layers`` layers can be trained.
* :class:`Compression` -- a *trained* MLP (``middle_layers`` layers of width ``middle_hidden_dim``)
  from the pooled sentence embedding to ``latent_seq_len x latent_dim`` latents, with a linear
  decompression head whose reconstruction of the embedding is one of its training signals.
* :class:`MiddleTransformer` -- ``middle_transformer_layers`` pre-norm blocks over the latents.
* :class:`PrefixAdapter` -- ``prefix_len`` learned queries cross-attending to the latents, then a
  self-attention block over the prefix; its output is fed to the decoder as ``inputs_embeds``.
* Stop latent: a fixed unit vector (seeded) that marks the unused latent slots; at inference the
  latent sequence is cut at the first latent whose cosine with it reaches the threshold.
"""

from __future__ import annotations

import json
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.checkpoint import checkpoint

from xoron_pipelines.latent.encoder import _sentence_transformers_normalizes, resolve_encoder_dir
from xoron_pipelines.validation import Seed, StrictModel


class LatentArchitecture(StrictModel):
    """The knobs that shape the latent modules, declared once: the ``latent`` parameter schema
    (:class:`xoron_pipelines.pipelines.latent.params.Params`) extends it, and :class:`LatentConfig`
    adds what the encoder and decoder determine."""

    latent_dim: int = Field(256, ge=1)
    latent_seq_len: int = Field(8, ge=1)
    prefix_len: int = Field(50, ge=1)
    middle_hidden_dim: int = Field(512, ge=1, description="hidden width of the compression MLP")
    middle_layers: int = Field(4, ge=1, description="layers of the compression MLP (legacy 'middle MLP layers')")
    middle_transformer_layers: int = Field(4, ge=0)
    middle_num_heads: int = Field(4, ge=1)
    middle_ffn_multiplier: float = Field(4.0, gt=0)
    middle_dropout: float = Field(0.1, ge=0, lt=1)
    middle_use_rope: bool = True
    adapter_num_heads: int = Field(4, ge=1)
    adapter_dropout: float = Field(0.1, ge=0, lt=1)
    adapter_use_rope: bool = True
    use_prefix_rope: bool = True
    num_encoder_unfrozen_layers: int = Field(2, ge=0)
    trust_remote_code: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    use_rmsnorm: bool = True
    rmsnorm_eps: float = Field(1e-6, gt=0)
    rope_base: float = Field(10000.0, gt=1)
    normalize_latent: bool = True
    use_stop_latent: bool = True
    stop_latent_init: Literal["random_normalized", "random"] = "random_normalized"
    stop_latent_seed: Seed = 1337
    stop_latent_cosine_threshold: float = Field(0.99, gt=-1, le=1)


class LatentConfig(LatentArchitecture):
    """Everything needed to rebuild the latent modules (saved as ``config.json``)."""

    encoder_model: str
    encoder_hidden: int = Field(ge=1)
    decoder_hidden: int = Field(ge=1)
    encoder_max_len: int = Field(512, ge=2)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2, sort_keys=True)


# ------------------------------------------------------------------------------ building blocks
def make_norm(dim: int, cfg: LatentConfig) -> nn.Module:
    """RMSNorm (use_rmsnorm) or LayerNorm, both with ``rmsnorm_eps``."""
    return nn.RMSNorm(dim, eps=cfg.rmsnorm_eps) if cfg.use_rmsnorm else nn.LayerNorm(dim, eps=cfg.rmsnorm_eps)


def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding of (B, heads, T, d) by position 0..T-1 (half-split layout)."""
    t, d = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head attention of queries ``x`` over ``ctx`` (self-attention when ctx is None).

    ``rope_q`` / ``rope_k`` rotate queries / keys by their positions. ``impl``: ``sdpa``
    (torch's fused scaled_dot_product_attention), ``eager`` (explicit softmax) or
    ``flash_attention_2`` (the flash_attn package, CUDA, no key mask).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float,
        cfg: LatentConfig,
        rope_q: bool,
        rope_k: bool,
        kv_dim: int | None = None,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.dropout, self.cfg = heads, dropout, cfg
        self.rope_q, self.rope_k = rope_q, rope_k
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None, key_mask: torch.Tensor | None = None):
        ctx = x if ctx is None else ctx
        q = self._split(self.q(x))
        k, v = (self._split(part) for part in self.kv(ctx).chunk(2, dim=-1))
        if self.rope_q:
            q = rope(q, self.cfg.rope_base)
        if self.rope_k:
            k = rope(k, self.cfg.rope_base)
        p = self.dropout if self.training else 0.0
        mask = None if key_mask is None else key_mask[:, None, None, :].bool()
        impl = self.cfg.attn_implementation
        if impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        elif impl == "eager":
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            y = F.dropout(scores.softmax(-1), p) @ v
        else:
            from flash_attn import flash_attn_func

            y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=p).transpose(1, 2)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, multiplier: float, dropout: float) -> None:
        super().__init__()
        hidden = max(1, int(dim * multiplier))
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm block: (cross-)attention + feed-forward, each with a residual and dropout."""

    def __init__(
        self,
        dim: int,
        heads: int,
        multiplier: float,
        dropout: float,
        cfg: LatentConfig,
        rope_q: bool,
        rope_k: bool,
        kv_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1, self.norm2 = make_norm(dim, cfg), make_norm(dim, cfg)
        self.attn = Attention(dim, heads, dropout, cfg, rope_q, rope_k, kv_dim)
        self.ffn = FeedForward(dim, multiplier, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None, key_mask: torch.Tensor | None = None):
        x = x + self.drop(self.attn(self.norm1(x), ctx, key_mask))
        return x + self.drop(self.ffn(self.norm2(x)))


# ------------------------------------------------------------------------------ the modules
class Compression(nn.Module):
    """Pooled embedding (B, H) -> latents (B, L, D) through a ``middle_layers``-layer MLP, and the
    linear decompression (B, L, D) -> (B, H) used for the reconstruction loss."""

    def __init__(self, cfg: LatentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = (
            [cfg.encoder_hidden]
            + [cfg.middle_hidden_dim] * (cfg.middle_layers - 1)
            + [cfg.latent_seq_len * cfg.latent_dim]
        )
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.decompress = nn.Linear(cfg.latent_seq_len * cfg.latent_dim, cfg.encoder_hidden)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        z = self.mlp(emb).view(emb.shape[0], self.cfg.latent_seq_len, self.cfg.latent_dim)
        return F.normalize(z, dim=-1) if self.cfg.normalize_latent else z

    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        return self.decompress(z.reshape(z.shape[0], -1))


class MiddleTransformer(nn.Module):
    """Latents -> latents: residual pre-norm transformer blocks and a final norm + projection."""

    def __init__(self, cfg: LatentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.latent_dim
        self.blocks = nn.ModuleList(
            Block(
                d,
                cfg.middle_num_heads,
                cfg.middle_ffn_multiplier,
                cfg.middle_dropout,
                cfg,
                cfg.middle_use_rope,
                cfg.middle_use_rope,
            )
            for _ in range(cfg.middle_transformer_layers)
        )
        self.norm = make_norm(d, cfg)
        self.proj = nn.Linear(d, d)
        self.gradient_checkpointing = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.gradient_checkpointing and self.training else block(x)
        out = z + self.proj(self.norm(x))
        return F.normalize(out, dim=-1) if self.cfg.normalize_latent else out


class PrefixAdapter(nn.Module):
    """Latents (B, L, D) + their validity (B, L) -> decoder prefix (B, prefix_len, decoder_hidden)."""

    def __init__(self, cfg: LatentConfig) -> None:
        super().__init__()
        h = cfg.decoder_hidden
        self.queries = nn.Parameter(torch.randn(cfg.prefix_len, h) * 0.02)
        self.cross = Block(
            h,
            cfg.adapter_num_heads,
            4.0,
            cfg.adapter_dropout,
            cfg,
            cfg.adapter_use_rope,
            cfg.adapter_use_rope,
            kv_dim=cfg.latent_dim,
        )
        self.self_block = Block(
            h, cfg.adapter_num_heads, 4.0, cfg.adapter_dropout, cfg, cfg.use_prefix_rope, cfg.use_prefix_rope
        )
        self.norm = make_norm(h, cfg)
        self.out = nn.Linear(h, h)

    def forward(self, z: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        x = self.queries.unsqueeze(0).expand(z.shape[0], -1, -1)
        x = self.cross(x, z, valid)
        x = self.self_block(x)
        return self.out(self.norm(x))


def make_stop_latent(cfg: LatentConfig) -> torch.Tensor:
    """The stop latent: a seeded standard-normal vector, unit-normalised for ``random_normalized``."""
    g = torch.Generator().manual_seed(cfg.stop_latent_seed)
    v = torch.randn(cfg.latent_dim, generator=g)
    return F.normalize(v, dim=0) if cfg.stop_latent_init == "random_normalized" else v


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layer list of a Hugging Face encoder (the ModuleList with one entry per
    hidden layer: ``encoder.layer`` for BERT, ``layers`` for ModernBERT)."""
    n = int(model.config.num_hidden_layers)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer layers of {type(model).__name__}")


class TrainableEncoder(nn.Module):
    """A local Hugging Face encoder with masked mean pooling (L2-normalised when the model's
    sentence-transformers definition says so, as the embedding cache does)."""

    def __init__(self, encoder_model: str, max_len: int, trust_remote_code: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_encoder_dir(encoder_model)
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
        self.normalize = _sentence_transformers_normalizes(path)
        self.max_len = min(max_len, int(getattr(self.model.config, "max_position_embeddings", max_len)))
        st = path / "sentence_bert_config.json"
        if st.is_file():
            self.max_len = min(self.max_len, int(json.loads(st.read_text()).get("max_seq_length", self.max_len)))
        self.hidden_size = int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded token ids and mask (on the encoder's device), cut to ``max_len``."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_len, padding=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def unfreeze_top(self, n: int) -> list[str]:
        """Freeze everything, then unfreeze the top ``n`` layers; returns their parameter names."""
        self.model.requires_grad_(False)
        layers = encoder_layers(self.model)
        if n > len(layers):
            raise ValueError(f"num_encoder_unfrozen_layers={n} exceeds the encoder's {len(layers)} layers")
        top = set(range(len(layers) - n, len(layers)))
        names = []
        for i, layer in enumerate(layers):
            if i in top:
                layer.requires_grad_(True)
        for name, p in self.named_parameters():
            if p.requires_grad:
                names.append(name)
        return names


class LatentModel(nn.Module):
    """The composition; the decoder is frozen and never saved with the latent weights."""

    def __init__(self, cfg: LatentConfig, encoder: TrainableEncoder, decoder: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.compression = Compression(cfg)
        self.middle = MiddleTransformer(cfg)
        self.adapter = PrefixAdapter(cfg)
        self.register_buffer("stop_latent", make_stop_latent(cfg))
        self.decoder = decoder
        self.decoder.requires_grad_(False)
        self.encoder_trained = False  # True once encoder layers were trained (the cache is then stale)

    # ---- latents -------------------------------------------------------------------------
    def slots(self, num_tokens: torch.Tensor) -> torch.Tensor:
        """Content latents of a text of ``num_tokens`` encoder tokens: ceil(L * n / max_len) in [1, L]."""
        L = self.cfg.latent_seq_len
        k = torch.ceil(num_tokens.float() * L / self.cfg.encoder_max_len).long()
        return k.clamp(1, L)

    def with_stop(self, z: torch.Tensor, num_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the slots after a text's content latents by the stop latent; returns the
        latents and the validity mask (B, L) of the content slots (all True without stop latent)."""
        b, L, _ = z.shape
        if not self.cfg.use_stop_latent or num_tokens is None:
            return z, torch.ones(b, L, dtype=torch.bool, device=z.device)
        valid = torch.arange(L, device=z.device)[None] < self.slots(num_tokens.to(z.device))[:, None]
        stop = self.stop_latent.to(z.dtype).expand_as(z)
        return torch.where(valid[..., None], z, stop), valid

    def valid_until_stop(self, z: torch.Tensor) -> torch.Tensor:
        """Validity (B, L) of predicted latents: everything before the first latent whose cosine
        with the stop latent is >= stop_latent_cosine_threshold (at least one latent kept)."""
        if not self.cfg.use_stop_latent:
            return torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
        cos = F.cosine_similarity(z, self.stop_latent.to(z.dtype)[None, None], dim=-1)
        is_stop = cos >= self.cfg.stop_latent_cosine_threshold
        valid = torch.cumsum(is_stop.long(), dim=1) == 0
        valid[:, 0] = True
        return valid

    # ---- decoder ---------------------------------------------------------------------------
    def decoder_inputs(self, prefix: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        """inputs_embeds = [prefix; embed(ids)], its attention mask and labels (-100 on the
        prefix and padding)."""
        emb = self.decoder.get_input_embeddings()(ids).to(prefix.dtype)
        ones = torch.ones(prefix.shape[:2], dtype=mask.dtype, device=mask.device)
        labels = torch.cat(
            [torch.full(prefix.shape[:2], -100, dtype=ids.dtype, device=ids.device), ids.masked_fill(mask == 0, -100)],
            dim=1,
        )
        return torch.cat([prefix, emb], dim=1), torch.cat([ones, mask], dim=1), labels

    def lm_loss(self, prefix: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        embeds, attn, labels = self.decoder_inputs(prefix, ids, mask)
        return self.decoder(inputs_embeds=embeds, attention_mask=attn, labels=labels).loss

    # ---- saving ------------------------------------------------------------------------------
    def latent_state(self) -> dict[str, torch.Tensor]:
        """Weights saved for a stage: compression, middle, adapter, stop latent, and the encoder's
        top ``num_encoder_unfrozen_layers`` layers (the rest of the encoder and the decoder are
        reloaded from their own directories)."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("encoder.", "decoder."))}
        n = self.cfg.num_encoder_unfrozen_layers
        if n:
            layers = encoder_layers(self.encoder.model)
            for i in range(len(layers) - n, len(layers)):
                for k, v in layers[i].state_dict().items():
                    state[f"encoder_top.{i}.{k}"] = v
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def load_latent_state(self, state: dict[str, torch.Tensor]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith("encoder_top.")}
        missing, unexpected = self.load_state_dict(own, strict=False)
        bad = [k for k in missing if not k.startswith(("encoder.", "decoder."))]
        if bad or unexpected:
            raise ValueError(f"latent weights do not match the model: missing {bad[:5]}, unexpected {unexpected[:5]}")
        layers = encoder_layers(self.encoder.model)
        for key, value in state.items():
            if key.startswith("encoder_top."):
                _, i, rest = key.split(".", 2)
                layers[int(i)].state_dict()[rest].copy_(value)
