"""``export`` pipeline: HF directory, GGUF (llama.cpp), ONNX (+ int8) and MLflow registration."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
