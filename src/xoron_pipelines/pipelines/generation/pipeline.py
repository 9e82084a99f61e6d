"""``generation``: ``kedro run --pipeline generation`` after ``finetune`` (the frozen LLM is the
``tools`` stage's model) and the media data (``media_image``, ``media_video``).

Namespaced stages ``image_gen``, ``video_gen`` and ``speech`` (train -> evaluate, each training an
MLflow nested run; speech: the speech helper's nodes in :mod:`.speech`, parameters
``speech_generation``, reading ``media_audio``), ``generate_media`` (prompts of ``generation.generate`` -> PNG files) and
``export_generators`` (safetensors + config of both, the image generator also as a diffusers
pipeline directory).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_generator, export_generators, generate_media, train_image_generator, train_video_generator
from .speech import evaluate_speech, generate_speech, train_speech

LLM = "tools.model"


def _stage(name: str, train, media: str) -> list[Node]:
    return [
        Node(
            train,
            [LLM, "tokenizer", media, "params:generation"],
            [f"{name}.generator", f"{name}.summary"],
            name=f"train_{name}",
            namespace=name,
            tags=[name],
        ),
        Node(
            evaluate_generator,
            [f"{name}.generator", LLM, "tokenizer", media, "params:generation"],
            f"{name}.evaluation",
            name=f"evaluate_{name}",
            namespace=name,
            tags=[name],
        ),
    ]


def create_pipeline(**kwargs) -> Pipeline:
    """Every node is tagged by what it needs (``image_gen``, ``video_gen``, ``speech``):
    ``kedro run --pipeline generation --tags image_gen,video_gen`` leaves speech out."""
    nodes = [
        *_stage("image_gen", train_image_generator, "media_image"),
        *_stage("video_gen", train_video_generator, "media_video"),
        Node(
            train_speech,
            [LLM, "tokenizer", "media_audio", "params:speech_generation"],
            ["speech.speech_model", "speech.summary"],
            name="train_speech",
            namespace="speech",
            tags=["speech"],
        ),
        Node(
            evaluate_speech,
            ["speech.speech_model", LLM, "tokenizer", "media_audio", "params:speech_generation"],
            "speech.evaluation",
            name="evaluate_speech",
            namespace="speech",
            tags=["speech"],
        ),
        Node(
            generate_speech,
            ["speech.speech_model", LLM, "tokenizer", "params:speech_generation.prompts", "params:speech_generation"],
            "speech.samples",
            name="generate_speech",
            namespace="speech",
            tags=["speech"],
        ),
        Node(
            generate_media,
            ["image_gen.generator", "video_gen.generator", LLM, "tokenizer", "params:generation"],
            "generated_media",
            name="generate_media",
            tags=["image_gen", "video_gen"],
        ),
        Node(
            export_generators,
            ["image_gen.generator", "video_gen.generator", LLM, "tokenizer"],
            "generation_export",
            name="export_generators",
            tags=["image_gen", "video_gen"],
        ),
    ]
    return Pipeline(nodes, tags=["generation"])
