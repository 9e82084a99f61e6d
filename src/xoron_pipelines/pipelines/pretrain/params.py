"""Schema of ``conf/base/parameters_pretrain.yml``: ``pretrain.stages.{language, code}``."""

from __future__ import annotations

from typing import ClassVar

from xoron_pipelines.training.schema import STAGES, Kind, StagesGroup


class Params(StagesGroup):
    KINDS: ClassVar[dict[str, Kind]] = STAGES["pretrain"]
