"""``generation``: ``kedro run --pipeline generation`` after ``finetune`` (the frozen LLM is the
``tools`` stage's model) and the media data (``media_image``, ``media_video``).

Namespaced stages ``image_gen`` and ``video_gen`` (train -> evaluate, each training an MLflow
nested run), ``generate_media`` (prompts of ``generation.generate`` -> PNG files) and
``export_generators`` (safetensors + config of both, the image generator also as a diffusers
pipeline directory).

TODO(lead, speech): the speech helper's ``pipelines/generation/speech.py`` (``train_speech``,
``evaluate_speech``, ``generate_speech``) is not on this branch yet; wire it here as a ``speech``
namespace (``speech.generator``, ``speech.summary``, ``speech.evaluation`` from ``tools.model``,
``tokenizer``, ``media_audio``, ``params:generation``) when it lands.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_generator, export_generators, generate_media, train_image_generator, train_video_generator

LLM = "tools.model"


def _stage(name: str, train, media: str) -> list[Node]:
    return [
        Node(
            train,
            [LLM, "tokenizer", media, "params:generation"],
            [f"{name}.generator", f"{name}.summary"],
            name=f"{name}.train",
            namespace=name,
        ),
        Node(
            evaluate_generator,
            [f"{name}.generator", LLM, "tokenizer", media, "params:generation"],
            f"{name}.evaluation",
            name=f"{name}.evaluate",
            namespace=name,
        ),
    ]


def create_pipeline(**kwargs) -> Pipeline:
    nodes = [
        *_stage("image_gen", train_image_generator, "media_image"),
        *_stage("video_gen", train_video_generator, "media_video"),
        Node(
            generate_media,
            ["image_gen.generator", "video_gen.generator", LLM, "tokenizer", "params:generation"],
            "generated_media",
            name="generate_media",
        ),
        Node(
            export_generators,
            ["image_gen.generator", "video_gen.generator", LLM, "tokenizer"],
            "generation_export",
            name="export_generators",
        ),
    ]
    return Pipeline(nodes, tags=["generation"])
