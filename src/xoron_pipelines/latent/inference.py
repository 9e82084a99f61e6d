"""Build / restore a :class:`LatentModel` and turn text into latents into text.

``generate(model, tokenizer, texts, ...)``: encoder -> compression -> middle (cut at the stop
latent) -> prefix adapter -> the decoder samples up to ``max_generation_length`` tokens with the
seed's parameters (temperature, top_p, top_k, do_sample), using its KV cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xoron_pipelines.datasets.latent_model import DecoderBundle, LatentArtifact, load_decoder
from xoron_pipelines.latent.model import LatentArchitecture, LatentConfig, LatentModel, TrainableEncoder
from xoron_pipelines.model.generation import next_tokens


def decoder_hidden(decoder: Any) -> int:
    return int(decoder.get_input_embeddings().embedding_dim)


def build_model(p: Any, encoder_model: str, decoder: Any) -> LatentModel:
    """A fresh latent model from the ``latent`` params around ``decoder``; ``encoder_hidden_dim``
    / ``decoder_hidden_dim`` (seed: ``modernbert_hidden_dim`` / ``gpt2_hidden_dim``), when set,
    must equal the encoder's / decoder's hidden size."""
    encoder = TrainableEncoder(encoder_model, p.max_seq_len, p.trust_remote_code)
    dec = decoder_hidden(decoder)
    for knob, seed, given, actual in (
        ("encoder_hidden_dim", "modernbert_hidden_dim", p.encoder_hidden_dim, encoder.hidden_size),
        ("decoder_hidden_dim", "gpt2_hidden_dim", p.decoder_hidden_dim, dec),
    ):
        if given is not None and given != actual:
            raise ValueError(
                f"latent.{knob}/{seed}={given} but the model has hidden size {actual}; set it to {actual} or null"
            )
    if dec % p.adapter_num_heads:
        raise ValueError(f"latent.adapter_num_heads={p.adapter_num_heads} must divide the decoder hidden size {dec}")
    cfg = LatentConfig(
        encoder_model=encoder_model,
        encoder_hidden=encoder.hidden_size,
        decoder_hidden=dec,
        encoder_max_len=encoder.max_len,
        **{k: getattr(p, k) for k in LatentArchitecture.model_fields},
    )
    torch.manual_seed(p.seed)
    return LatentModel(cfg, encoder, decoder)


def _portable(path: str) -> str:
    """``path`` relative to the working directory (the project root under Kedro) when inside it."""
    full = Path(path).resolve()
    return str(full.relative_to(Path.cwd().resolve())) if full.is_relative_to(Path.cwd().resolve()) else str(full)


def artifact(model: LatentModel, weights_file: str, decoder: DecoderBundle | None, extra: dict) -> LatentArtifact:
    """The model's latent weights and the config that rebuilds it (decoder paths included)."""
    config = {**model.cfg.model_dump(), "weights_file": weights_file, **extra}
    if decoder is not None:
        config["decoder"] = {"path": _portable(decoder.path), "tokenizer_path": _portable(decoder.tokenizer_path)}
    return LatentArtifact(config, model.latent_state())


def from_artifact(art: LatentArtifact, decoder: DecoderBundle | None = None) -> tuple[LatentModel, Any]:
    """Rebuild the model saved in ``art`` (decoder: given, or the one recorded in its config)."""
    cfg = LatentConfig(**{k: v for k, v in art.config.items() if k in LatentConfig.model_fields})
    if decoder is None:
        decoder = load_decoder(art.config["decoder"]["path"], art.config["decoder"]["tokenizer_path"])
    encoder = TrainableEncoder(cfg.encoder_model, cfg.encoder_max_len, cfg.trust_remote_code)
    model = LatentModel(cfg, encoder, decoder.model)
    model.load_latent_state(art.state)
    return model.eval(), decoder.tokenizer


@torch.no_grad()
def latents(model: LatentModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted latents (B, L, D) of ``texts`` and their validity (cut at the stop latent)."""
    ids, mask = model.encoder.tokenize(texts)
    z, _ = model.with_stop(model.compression(model.encoder(ids, mask)), mask.sum(1))
    z = model.middle(z)
    return z, model.valid_until_stop(z)


@torch.no_grad()
def generate_ids(
    model: LatentModel,
    tokenizer: Any,
    texts: list[str],
    *,
    max_generation_length: int = 256,
    do_sample: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.9,
    top_k: int = 50,
    seed: int | None = None,
) -> torch.Tensor:
    """Generated token ids (B, <= max_generation_length), KV-cached decoding from the adapter's
    prefix; rows that ended (EOS) are padded."""
    model.eval()
    z, valid = latents(model, texts)
    prefix = model.adapter(z, valid)
    dec = model.decoder
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    device = prefix.device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=device)
    out = dec(inputs_embeds=prefix, attention_mask=mask, use_cache=True)
    tokens, done = [], torch.zeros(len(texts), dtype=torch.bool, device=device)
    for _ in range(max_generation_length):
        nxt = next_tokens(out.logits[:, -1], do_sample, temperature, top_k or None, top_p, gen)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        done |= nxt == eos if eos is not None else torch.zeros_like(done)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(len(texts), 1, dtype=torch.long, device=device)], dim=1)
        out = dec(input_ids=nxt[:, None], attention_mask=mask, past_key_values=out.cache, use_cache=True)
    return torch.stack(tokens, dim=1) if tokens else torch.zeros(len(texts), 0, dtype=torch.long)


def generate(model: LatentModel, tokenizer: Any, texts: list[str], **sampling: Any) -> list[str]:
    """Text -> latents -> text; ``sampling``: the keyword arguments of :func:`generate_ids`."""
    eos = tokenizer.eos_token_id
    texts_out = []
    for row in generate_ids(model, tokenizer, texts, **sampling).tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts_out.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts_out
