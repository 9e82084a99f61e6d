"""Register the exported Hugging Face directory with MLflow (pyfunc flavour).

The pyfunc model carries the exported directory as an artifact and generates text with
transformers (native classes; xoron-format directories through ``xoron_pipelines.model``,
which registers ``model_type="xoron"``), greedy, for at most the directory's
``generation_config.json`` ``max_new_tokens`` (``export.max_new_tokens``) unless the caller's
``params`` give another. It is logged to the active run -- kedro-mlflow's run during ``kedro run``
-- and registered under ``registered_model_name`` so ``mlflow ui`` shows it under Models, linked
to the run. The writes go through :func:`xoron_pipelines.tracking.register_pyfunc_model`; this
module imports mlflow only for the ``PythonModel`` base class.
"""

from __future__ import annotations

import os
from typing import Any

import mlflow.pyfunc

from xoron_pipelines.tracking import register_pyfunc_model

PIP_REQUIREMENTS = ["torch", "transformers", "tokenizers", "safetensors"]


class HFTextGenerator(mlflow.pyfunc.PythonModel):
    """pyfunc: a column of prompts in, a column of greedy completions out."""

    def load_context(self, context) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import xoron_pipelines.model  # noqa: F401  (registers the xoron config with the Auto classes)

        path = context.artifacts["hf_dir"]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()

    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        """Greedy completions; ``params["max_new_tokens"]`` or else the exported
        generation_config.json's ``max_new_tokens``."""
        import torch

        prompts = list(model_input)
        max_new = (params or {}).get("max_new_tokens") or self.model.generation_config.max_new_tokens
        outputs = []
        for prompt in prompts:
            ids = torch.tensor([self.tokenizer.encode(prompt)])
            with torch.no_grad():
                out = self.model.generate(ids, max_new_tokens=int(max_new), do_sample=False)
            outputs.append(self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        return outputs


def register_export(
    hf_dir: str | os.PathLike, registered_model_name: str, artifact_name: str = "model"
) -> dict[str, Any]:
    """Log ``hf_dir`` as a pyfunc model to the active (or a new) MLflow run and register it."""
    return register_pyfunc_model(
        HFTextGenerator(),
        {"hf_dir": str(hf_dir)},
        registered_model_name,
        artifact_name=artifact_name,
        pip_requirements=PIP_REQUIREMENTS,
    )


__all__ = ["HFTextGenerator", "register_export"]
