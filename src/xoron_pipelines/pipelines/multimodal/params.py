"""Schema of ``conf/base/parameters_multimodal.yml`` (top-level key ``multimodal``).

* ``mode`` (seed 000's finetune modes): ``text`` (no multimodal stage trains: every stage passes
  the ``tools`` model through), ``image`` / ``video`` / ``audio`` (that stage alone), ``all`` (the
  three chained: image -> video -> audio);
* ``model``: the multimodal model (:class:`~xoron_pipelines.model.multimodal.MultimodalConfig`:
  encoders, projector, fusion, token counts, ``asr_loss_weight``); its ``modalities`` follow
  ``mode`` (setting them too is allowed only when they agree);
* ``multi_scale``: seed 000's multi-scale knobs (:class:`~xoron_pipelines.data.multiscale.MultiScaleConfig`);
* ``stages``: exactly ``image``, ``video``, ``audio``, each a training stage with the text stages'
  knobs (``train``, ``freeze`` / ``unfreeze``, ``lora``, ``tracking``, checkpoints, ...) plus
  ``tasks``; the text-only knobs (``data_mix``, ``token_files``, ``sources``, ``loss_weights``,
  ``beta``) are refused;
* ``evaluation``: the held-out evaluation of each stage (:mod:`xoron_pipelines.evaluation.multimodal`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from xoron_pipelines.data.multiscale import MultiScaleConfig
from xoron_pipelines.model.multimodal import MultimodalConfig
from xoron_pipelines.training.multimodal import TASKS
from xoron_pipelines.training.schema import StageParams
from xoron_pipelines.validation import StrictModel

#: the stages, in training order (one per modality; the DAG is built from it)
MULTIMODAL_STAGES: tuple[str, ...] = ("image", "video", "audio")
Mode = Literal["text", "image", "video", "audio", "all"]
_TEXT_ONLY = ("data_mix", "token_files", "sources", "loss_weights", "beta")


class MultimodalStageParams(StageParams):
    """One multimodal stage: the text stages' knobs (training/schema.py) plus ``tasks``."""

    tasks: list[Literal["caption", "vqa", "transcribe"]] | None = Field(
        None,
        min_length=1,
        description="what the stage trains on: caption and / or vqa (image, video), transcribe (audio); "
        "null = all of its modality's tasks",
    )

    @model_validator(mode="after")
    def _multimodal_knobs(self) -> MultimodalStageParams:
        wrong = [k for k in _TEXT_ONLY if getattr(self, k) is not None]
        if wrong:
            raise ValueError(f"a multimodal stage does not use {', '.join(wrong)} (it reads media_<modality>)")
        if self.distributed.world_size > 1 or self.distributed.device_map is not None:
            raise ValueError(
                "distributed: a multimodal stage trains in the node's process on one device (nproc_per_node x "
                "nnodes = 1, device_map null): workers and layer placement know only the text model"
            )
        return self


class EvaluationSettings(StrictModel):
    """Held-out evaluation of every stage that trained (evaluate_<stage> nodes)."""

    enabled: bool = Field(True, description="false: the evaluate_<stage> nodes write {enabled: false}")
    max_rows: int | None = Field(None, gt=0, description="cap on held-out rows per modality (first ones); null = all")
    batch_size: int = Field(8, gt=0, description="items per forward pass (each with all its choices)")
    caption_choices: int = Field(4, ge=2, description="candidates per caption item (the right one + distinct others)")
    max_new_tokens: int = Field(24, gt=0, description="cap on a greedy transcript's tokens")
    grid_items: int = Field(12, ge=0, description="samples in the VQA sample-grid PNG artefact (0: none)")
    audio_clips: int = Field(4, ge=0, description="held-out WAV clips logged with their transcripts (0: none)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="caption distractor draw and bootstrap intervals")


class Params(StrictModel):
    mode: Mode = Field("all", description="seed 000 finetune mode: text | image | video | audio | all")
    model: MultimodalConfig = Field(default_factory=MultimodalConfig)
    multi_scale: MultiScaleConfig = Field(default_factory=MultiScaleConfig)
    stages: dict[str, MultimodalStageParams]
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)

    @model_validator(mode="after")
    def _check(self) -> Params:
        if list(self.stages) != list(MULTIMODAL_STAGES):
            raise ValueError(
                f"stages must be exactly {list(MULTIMODAL_STAGES)} in this order (the DAG is built from them; "
                f"mode picks which train), got {list(self.stages)}"
            )
        for name, stage in self.stages.items():
            wrong = sorted(set(stage.tasks or ()) - set(TASKS[name]))
            if wrong:
                raise ValueError(
                    f"stages.{name}.tasks: {wrong} do not apply to {name} (its tasks: {list(TASKS[name])})"
                )
        if "modalities" in self.model.model_fields_set and sorted(self.model.modalities) != sorted(self.modalities()):
            raise ValueError(
                f"model.modalities {list(self.model.modalities)} disagree with mode {self.mode!r} "
                f"({self.modalities()}); leave model.modalities out: the mode sets them"
            )
        return self

    def modalities(self) -> list[str]:
        """The modalities the mode trains, in stage order."""
        return list(MULTIMODAL_STAGES) if self.mode == "all" else [] if self.mode == "text" else [self.mode]

    def trains(self, stage: str) -> bool:
        """Whether ``stage`` trains in this run (its modality in the mode and enabled)."""
        return stage in self.modalities() and self.stages[stage].enabled

    def multimodal_config(self) -> MultimodalConfig:
        """The multimodal model's config with the mode's modalities."""
        return self.model.model_copy(update={"modalities": self.modalities()})
