"""Latent-space model (seed 004): the frozen encoder, the embedding cache it fills (``cache``: on
disk; ``cache_build``: building it; ``sources``: where the pairs come from), the model, its data,
stages and inference."""

from .cache import CacheSubset, CacheWriter, EmbeddingCache, fingerprint
from .encoder import PACKAGED_ENCODER, Encoder, EncoderNotFoundError, resolve_encoder_dir

__all__ = [
    "PACKAGED_ENCODER",
    "CacheSubset",
    "CacheWriter",
    "EmbeddingCache",
    "Encoder",
    "EncoderNotFoundError",
    "fingerprint",
    "resolve_encoder_dir",
]
