"""Latent-space model support: the frozen encoder and the embedding cache it fills."""

from .cache import CacheWriter, EmbeddingCache, fingerprint
from .encoder import PACKAGED_ENCODER, Encoder, EncoderNotFoundError, resolve_encoder_dir

__all__ = [
    "PACKAGED_ENCODER",
    "CacheWriter",
    "EmbeddingCache",
    "Encoder",
    "EncoderNotFoundError",
    "fingerprint",
    "resolve_encoder_dir",
]
