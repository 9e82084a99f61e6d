"""Schema of ``conf/base/parameters_finetune.yml``: ``finetune.stages.{tools, preference}``."""

from __future__ import annotations

from typing import ClassVar

from xoron_pipelines.training.schema import STAGES, Kind, StagesGroup


class Params(StagesGroup):
    KINDS: ClassVar[dict[str, Kind]] = STAGES["finetune"]
