"""Model export (issue 5): Hugging Face directory, GGUF for llama.cpp, ONNX (+ int8), LoRA
adapters, MLflow registration. One module per format; every writer is atomic (temp path, then
rename) and refuses an architecture its format cannot represent before writing anything.

* :mod:`.hf` -- ``export_hf``: native transformers class where lossless (interop), else xoron
  config; tokenizer, generation_config.json, chat template, model card (data, stages, licence).
* :mod:`.tokenizer` -- the exported tokenizer (adds the BOS every training row starts with; chat
  template with BOS), the special ids and stop ids of config.json / generation_config.json / GGUF.
* :mod:`.gguf_export` -- ``export_gguf``: f16 / q8_0, llama / deepseek2 / glm4moe.
* :mod:`.onnx_export` -- ``export_onnx_all``: logits graph, onnxruntime parity, int8 + accuracy.
* :mod:`.lora_export` -- ``export_lora``: peft adapter directory + merged HF directory.
* :mod:`.mlflow_registry` -- ``register_export``: pyfunc model logged to the run and registered
  (through :mod:`xoron_pipelines.tracking`).
* :mod:`.multimodal` -- ``save_multimodal`` / ``load_multimodal``: the multimodal model (safetensors +
  config.json of every sub-config), its LLM also through ``export_hf``, a local HF vision tower.
* :mod:`.bundle` -- ``export_model``: every requested format of one model, staged for the
  catalog's ``export_*`` datasets (:mod:`xoron_pipelines.datasets.export`).
"""
