"""Schema of one training stage (``<group>.stages.<stage>`` in parameters_pretrain/finetune.yml).

Every stage of every kind (``causal_lm`` packed pretraining, ``sft`` chat fine-tuning, ``dpo``
preference optimisation) has the same knobs; a kind ignores none of them silently: the ones that
only make sense for one kind (``loss_weights`` for SFT, ``beta`` for DPO, ``sources`` for the
chat kinds) are rejected by :meth:`StageParams.check_kind` when set on another kind.

It lives in the library (not in ``pipelines/training``): the stage orchestrator
(:mod:`xoron_pipelines.training.stage`) and the latent stages build on it; the ``pretrain`` /
``finetune`` parameter groups (``pipelines/<group>/params.py``) are :class:`StagesGroup` subclasses.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from xoron_pipelines.device import CPU_PEAK_FLOPS, DeviceSpec
from xoron_pipelines.training.config import TrainConfig
from xoron_pipelines.training.distributed import DistributedSettings
from xoron_pipelines.training.lora import LoraSettings
from xoron_pipelines.training.losses import LossWeights
from xoron_pipelines.training.token_files import TokenFiles
from xoron_pipelines.training.user_data import DataSource, Source
from xoron_pipelines.validation import StrictModel

Kind = Literal["causal_lm", "sft", "dpo"]

#: stages per group, in order, and their kinds (seed 001: language -> code -> tools -> RLHF); the
#: Kedro DAG (``pipelines/training/pipeline.py``) and the groups' schemas are built from it
STAGES: dict[str, dict[str, Kind]] = {
    "pretrain": {"language": "causal_lm", "code": "causal_lm"},
    "finetune": {"tools": "sft", "preference": "dpo"},
}
#: every stage, in training order (the last is the final model)
STAGE_ORDER: tuple[str, ...] = tuple(stage for group in STAGES.values() for stage in group)
#: the type of a parameter naming a stage
StageName = Literal["language", "code", "tools", "preference"]
assert STAGE_ORDER == StageName.__args__, "StageName must list STAGES' stages in order"

__all__ = ["CPU_PEAK_FLOPS", "STAGES", "STAGE_ORDER", "StageParams", "StagesGroup", "TrackingParams"]


class TrackingParams(StrictModel):
    """What the stage logs to its nested MLflow run."""

    enabled: bool = Field(True, description="open a nested MLflow run for the stage and log into it")
    peak_flops: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="peak FLOP/s of one device for the MFU estimate (6 x active params x tokens/s / peak); "
        "auto: the GPU's dense peak at the stage's precision from xoron_pipelines.device.GPU_PEAK_FLOPS "
        "(no MFU, with a warning, for a GPU not in it), on the CPU 1.6e11 (2 cores x 2.5 GHz x 32 "
        "FLOP/cycle, AVX2); a number overrides it",
    )
    log_model: bool = Field(True, description="log the final stage model directory as an artefact")
    log_tokenizer: bool = Field(True, description="log the tokenizer directory as an artefact")
    plots: bool = Field(True, description="log the loss-curve and expert-load PNG plots")
    system_metrics: bool = Field(
        True,
        description="log system metrics (CPU, memory, disk, network; NVIDIA GPUs when nvidia-ml-py is "
        "installed) as system/* metrics of the stage run while it trains",
    )
    system_metrics_interval_s: float = Field(5.0, gt=0, description="seconds between two system-metric samples")


class EvalParams(StrictModel):
    """Held-out evaluation of a stage (every ``train.eval_steps`` and once at the end)."""

    max_batches: int | None = Field(8, gt=0, description="cap on validation batches per evaluation; null = all")
    batch_size: int | None = Field(None, gt=0, description="validation batch size; null = train.batch_size")
    val_fraction: float = Field(
        0.05, gt=0, lt=1, description="sft / dpo: share of the examples held out for evaluation"
    )


class StageParams(StrictModel):
    """One stage: data, optimisation, duration, freezing, LoRA, loss weights, tracking."""

    enabled: bool = Field(True, description="false: the stage passes its input model through unchanged")
    device: DeviceSpec = Field(
        "auto",
        description="where a single-process stage trains: auto (the first CUDA GPU when one is visible, "
        "else the CPU), cpu, cuda or cuda:N; an absent GPU is an error at validation time",
    )
    train: TrainConfig = Field(description="the engine's knobs (lr, schedule, steps/epochs, batch, precision, ...)")
    max_samples: int | None = Field(
        None,
        gt=0,
        description="use at most this many training rows / conversations / pairs (first after a "
        "seeded shuffle); null = all",
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="parameter-name patterns to freeze (fnmatch globs, or 're:<regex>'); names as in "
        "model.named_parameters() of the plain model, e.g. 'model.embed_tokens.*'",
    )
    unfreeze: list[str] = Field(
        default_factory=list, description="patterns that stay trainable although a freeze pattern matches them"
    )
    lora: LoraSettings = Field(
        default_factory=lambda: LoraSettings(enabled=False),
        description="LoRA adapters: applied, trained, merged at the end of the stage",
    )
    checkpoint_dir: str | None = Field(
        None,
        min_length=1,
        description="root of the stage checkpoints (<root>/<stage>/<fingerprint>/checkpoint-<step>); null = the "
        "catalog's <stage>.checkpoints store (data/06_models/checkpoints); a path replaces it "
        "(several nodes: storage they all share)",
    )
    keep_configurations: int = Field(
        3,
        ge=1,
        description="keep the checkpoints of this many most recently used configurations of the stage "
        "(the current one included); older ones are removed, each named in the log",
    )
    eval: EvalParams = Field(default_factory=EvalParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    distributed: DistributedSettings = Field(
        default_factory=DistributedSettings,
        description="scale-out: the node launches nproc_per_node x nnodes data-parallel workers (DDP / FSDP2, "
        "torch.distributed's elastic launcher); 1 x 1 trains in the node's own process",
    )
    # ---- causal_lm ------------------------------------------------------------------------------
    data_mix: str | None = Field(
        None,
        min_length=1,
        description="causal_lm: train and validate on this stage mix of data_processing.stage_mixes "
        "(packed_mixes/<name>); null = the main packing (packed_train / packed_val)",
    )
    token_files: TokenFiles | None = Field(
        None,
        description="causal_lm: train on seed 001's .npy token files ({data_dir, data_file, val_file}) "
        "instead of the packed shards; null = the packed shards",
    )
    # ---- chat kinds (sft / dpo) ----------------------------------------------------------------
    sources: list[Source] | None = Field(
        None,
        min_length=1,
        description="sft / dpo: what to train on: synth partition names (types) and / or user datasets "
        "({path: ...} or {hf: ..., split: ...}, optional weight / max_samples; "
        "training/user_data.py)",
    )
    max_seq_len: int | None = Field(
        None,
        gt=1,
        description="sft / dpo: truncate rendered conversations to this many ids; "
        "null = the model's max_position_embeddings",
    )
    loss_weights: LossWeights | None = Field(
        None,
        description="sft: seed 000's block weights (cot 1.5, tool 1.3, anti-hallucination 1.2, "
        "code-exec 1.2) and modality weights (the stage loss is llm_loss_weight x the LM "
        "loss); null = those defaults",
    )
    beta: float | None = Field(None, gt=0, description="dpo: strength of the KL anchor to the reference")

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> StageParams:
        world = self.distributed.world_size
        if self.train.batch_size % world:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} is the global micro-batch, split over the "
                f"{world} processes of distributed (nproc_per_node x nnodes): make it a multiple of {world}"
            )
        return self

    def check_kind(self, kind: Kind) -> StageParams:
        """Reject knobs that the stage's kind would not use (instead of ignoring them)."""
        wrong = []
        if kind != "sft" and self.loss_weights is not None:
            wrong.append("loss_weights (sft only)")
        if kind != "dpo" and self.beta is not None:
            wrong.append("beta (dpo only)")
        if kind != "causal_lm" and self.data_mix is not None:
            wrong.append("data_mix (causal_lm only; sft / dpo stages read their sources)")
        if kind != "causal_lm" and self.token_files is not None:
            wrong.append("token_files (causal_lm only; sft / dpo stages read their sources)")
        if kind == "causal_lm" and (self.sources is not None or self.max_seq_len is not None):
            wrong.append("sources / max_seq_len (sft / dpo only; a causal_lm stage reads packed shards)")
        if self.data_mix is not None and self.token_files is not None:
            raise ValueError("give either data_mix or token_files, not both (both name the stage's data)")
        if kind == "dpo" and self.beta is None:
            raise ValueError("a dpo stage needs beta")
        if kind in ("sft", "dpo") and self.sources is None:
            raise ValueError(f"a {kind} stage needs sources (synth partitions and / or user datasets)")
        if wrong:
            raise ValueError(f"a {kind} stage does not use: {', '.join(wrong)}")
        if self.enabled:  # its data can be had: before any work, not when the stage starts
            for i, source in enumerate(self.sources or []):
                if isinstance(source, DataSource):
                    source.check_available(f"sources[{i}]")
            if self.token_files is not None:
                self.token_files.check_available()
        return self


class StagesGroup(StrictModel):
    """Base of the ``pretrain`` / ``finetune`` groups: exactly the stages named in code, each
    validated for its kind (subclasses set :attr:`KINDS`)."""

    KINDS: ClassVar[dict[str, Kind]] = {}

    stages: dict[str, StageParams]

    @model_validator(mode="after")
    def _stages(self):
        expected = list(self.KINDS)
        if list(self.stages) != expected:
            raise ValueError(
                f"stages must be exactly {expected} in this order (the DAG is built from them; "
                f"disable one with enabled: false), got {list(self.stages)}"
            )
        for name, stage in self.stages.items():
            try:
                stage.check_kind(self.KINDS[name])
            except ValueError as exc:
                raise ValueError(f"stages.{name}: {exc}") from None
        return self

    def check_references(self, groups: dict[str, Any]) -> None:
        """Each stage's ``data_mix`` names a mix of ``data_processing.stage_mixes``."""
        processing = groups.get("data_processing")
        if processing is None:
            return
        for name, stage in self.stages.items():
            if stage.enabled and stage.data_mix is not None and stage.data_mix not in processing.stage_mixes:
                raise ValueError(
                    f"stages.{name}.data_mix: {stage.data_mix!r} is not one of data_processing."
                    f"stage_mixes {sorted(processing.stage_mixes)} (conf/base/parameters_data_processing.yml)"
                )
