"""The parameter registry: each top-level parameter group (``conf/base/parameters_<group>.yml``)
-> its pydantic schema. One explicit table; :mod:`xoron_pipelines.validation` validates with it.
A new parameter group (a new pipeline's ``params.py``, or a library group like ``model``) is added
here."""

from __future__ import annotations

from pydantic import BaseModel

from xoron_pipelines.model.config import ModelParams
from xoron_pipelines.pipelines.ablation.params import Params as AblationParams
from xoron_pipelines.pipelines.data_processing.params import Params as DataProcessingParams
from xoron_pipelines.pipelines.embedding_cache.params import Params as EmbeddingCacheParams
from xoron_pipelines.pipelines.evaluation.params import Params as EvaluationParams
from xoron_pipelines.pipelines.export.params import Params as ExportParams
from xoron_pipelines.pipelines.finetune.params import Params as FinetuneParams
from xoron_pipelines.pipelines.generation.params import Params as GenerationParams
from xoron_pipelines.pipelines.generation.speech import SpeechParams
from xoron_pipelines.pipelines.latent.params import Params as LatentParams
from xoron_pipelines.pipelines.multimodal.params import Params as MultimodalParams
from xoron_pipelines.pipelines.pretrain.params import Params as PretrainParams
from xoron_pipelines.pipelines.synth.params import Params as SynthParams

SCHEMAS: dict[str, type[BaseModel]] = {
    "synth": SynthParams,
    "data_processing": DataProcessingParams,
    "model": ModelParams,
    "pretrain": PretrainParams,
    "finetune": FinetuneParams,
    "evaluation": EvaluationParams,
    "export": ExportParams,
    "embedding_cache": EmbeddingCacheParams,
    "latent": LatentParams,
    "ablation": AblationParams,
    "multimodal": MultimodalParams,
    "generation": GenerationParams,
    "speech_generation": SpeechParams,
}
