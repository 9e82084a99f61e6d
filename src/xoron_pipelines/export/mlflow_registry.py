"""Register the exported Hugging Face directory with MLflow (pyfunc flavour).

The pyfunc model carries the exported directory as an artifact and generates text with
transformers (native classes; xoron-format directories through ``xoron_pipelines.model``,
which registers ``model_type="xoron"``). It is logged to the active run -- kedro-mlflow's run
during ``kedro run`` -- and registered under ``registered_model_name`` so ``mlflow ui`` shows
it under Models, linked to the run.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import mlflow
import mlflow.pyfunc

logger = logging.getLogger(__name__)


class HFTextGenerator(mlflow.pyfunc.PythonModel):
    """pyfunc: a column of prompts in, a column of greedy completions out."""

    def load_context(self, context) -> None:
        import xoron_pipelines.model  # noqa: F401  (registers the xoron config with the Auto classes)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts["hf_dir"]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()

    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        import torch

        prompts = list(model_input)
        max_new = int((params or {}).get("max_new_tokens", 32))
        outputs = []
        for prompt in prompts:
            ids = torch.tensor([self.tokenizer.encode(prompt)])
            with torch.no_grad():
                out = self.model.generate(ids, max_new_tokens=max_new, do_sample=False)
            outputs.append(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return outputs


def register_export(hf_dir: str | os.PathLike, registered_model_name: str, artifact_name: str = "model") -> dict[str, Any]:
    """Log ``hf_dir`` as a pyfunc model to the active (or a new) MLflow run and register it."""
    own_run = mlflow.active_run() is None
    run = mlflow.start_run() if own_run else mlflow.active_run()
    try:
        info = mlflow.pyfunc.log_model(
            name=artifact_name, python_model=HFTextGenerator(), artifacts={"hf_dir": str(hf_dir)},
            registered_model_name=registered_model_name,
            pip_requirements=["torch", "transformers", "tokenizers", "safetensors"],
        )
    finally:
        if own_run:
            mlflow.end_run()
    logger.info("registered %s (version %s) from run %s", registered_model_name,
                info.registered_model_version, run.info.run_id)
    return {"run_id": run.info.run_id, "model_uri": info.model_uri,
            "registered_model_name": registered_model_name, "version": info.registered_model_version}


__all__ = ["HFTextGenerator", "register_export"]
