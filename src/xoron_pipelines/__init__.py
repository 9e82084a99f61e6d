"""xoron-pipelines: declarative LLM training with Kedro."""

__version__ = "0.1.0"
