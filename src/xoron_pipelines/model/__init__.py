"""The Xoron LLM: config, presets, modules, save/load and generation.

Importing this package registers ``model_type="xoron"`` with transformers' Auto classes, so
``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM.from_pretrained(dir)`` load our own saved
directories without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from xoron_pipelines.model.attention import KVCache, cache_bytes_per_token
from xoron_pipelines.model.config import XoronConfig, get_config
from xoron_pipelines.model.generation import generate
from xoron_pipelines.model.model import XoronForCausalLM, XoronModel
from xoron_pipelines.model.params_count import count_parameters
from xoron_pipelines.model.presets import PRESETS

AutoConfig.register("xoron", XoronConfig, exist_ok=True)
AutoModel.register(XoronConfig, XoronModel, exist_ok=True)
AutoModelForCausalLM.register(XoronConfig, XoronForCausalLM, exist_ok=True)

__all__ = [
    "KVCache",
    "PRESETS",
    "XoronConfig",
    "XoronForCausalLM",
    "XoronModel",
    "cache_bytes_per_token",
    "count_parameters",
    "generate",
    "get_config",
]
