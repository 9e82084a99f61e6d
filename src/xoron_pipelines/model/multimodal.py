"""The multimodal Xoron model: media encoders -> projectors -> LLM (markers + cross-attention fusion).

Images, videos and audio clips enter the LLM in two ways at once (seed 003's architecture):

* **Modality markers** (LLaVA-style). A prompt holds, per media item, :func:`media_prompt_ids`:
  ``<|image|>``, ``num_vision_tokens`` placeholder (pad) tokens, ``<|/image|>`` (``<|video|>`` /
  ``<|audio|>`` likewise). The item's encoder features go through its modality's projector
  (:mod:`.projector`: Perceiver resampler or MLP) to exactly that many LLM-width tokens, which
  replace the placeholders' embeddings. The media of a batch are given per modality in marker
  order: row-major over the batch, left to right within a row (``images[k]`` fills the k-th
  ``<|image|>`` of the batch), so a row may hold several items or none. The labels of placeholder
  positions are ignored (-100): the model is never asked to predict media.
* **Cross-attention fusion** (Flamingo, :mod:`.fusion`): gated cross-attention blocks after every
  ``cross_attention_every``-th decoder layer attend from each text token to the projected tokens of
  every media item whose start marker precedes it in its row. The gates start at 0.

With no media given the forward is the LLM's own (``llm(input_ids, attention_mask, labels)``), so a
blind baseline uses the same weights; the LLM may be a peft (LoRA) model (its adapters train, and
:meth:`XoronMultimodalModel.merge_lora` folds them in). ``freeze_llm`` freezes every LLM weight but
LoRA adapters (encoders, projectors and fusion train); ``freeze_vision`` is the vision encoder's.

ASR: when audio and ``transcripts`` are given and the audio encoder has a CTC head, ``asr_loss`` is
its CTC loss and ``loss = lm_loss + asr_loss_weight * asr_loss`` (+ the video encoder's MoE balance
loss when its ``aux_loss_coef`` is set). ``lm_loss`` is the LLM's loss (with its own MoE aux loss).

Device map (seed 000's ``use_model_parallel``): ``device_map: {modalities: cuda:0, llm: cuda:1}``
puts the encoders and projectors on one device and the LLM (markers, i.e. its embeddings, and the
fusion blocks) on the other; the modality tokens move to the LLM's device. Without a
``device_map`` it is that layout on two or more GPUs, everything on the one GPU, or nothing
placed on a CPU machine (logged). A device that is not there is an error when the config is
validated. Placement uses :func:`xoron_pipelines.model.placement.place_model` (hooks move each
part's inputs to its device), so do not ``.to()`` a placed model afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from xoron_pipelines.device import DeviceSpec, resolve_device
from xoron_pipelines.model.audio import AudioEncoderConfig, build_audio_encoder, ctc_loss
from xoron_pipelines.model.fusion import FusionLayers, fused_layer_indices
from xoron_pipelines.model.placement import Placement, place_model
from xoron_pipelines.model.projector import ProjectorType, build_projector
from xoron_pipelines.model.video import VideoEncoderConfig, build_video_encoder
from xoron_pipelines.model.vision import VisionEncoderConfig, build_vision_encoder
from xoron_pipelines.tokens import BLOCKS
from xoron_pipelines.validation import StrictModel

log = logging.getLogger(__name__)

Modality = Literal["image", "video", "audio"]
MODALITIES: tuple[str, ...] = ("image", "video", "audio")
#: modality -> the MultimodalConfig field of its encoder config / of its token count
ENCODER_FIELD = {"image": "vision", "video": "video", "audio": "audio"}
TOKENS_FIELD = {"image": "num_vision_tokens", "video": "num_video_tokens", "audio": "num_audio_tokens"}
#: the parts a device map places
DEVICE_MAP_PARTS: tuple[str, ...] = ("modalities", "llm")


class MultimodalConfig(StrictModel):
    """Seed 000's multimodal knobs (the encoders' own in ``vision`` / ``video`` / ``audio``); the
    defaults are sized for a 2-core CPU (seed sizes: ``num_vision_tokens: 64``)."""

    modalities: list[Modality] = Field(default_factory=lambda: list(MODALITIES), min_length=1)
    vision: VisionEncoderConfig = Field(default_factory=VisionEncoderConfig)
    video: VideoEncoderConfig = Field(default_factory=VideoEncoderConfig)
    audio: AudioEncoderConfig = Field(default_factory=AudioEncoderConfig)
    num_vision_tokens: int = Field(16, ge=1)  # LLM tokens per image (seed: 64)
    num_video_tokens: int = Field(16, ge=1)  # LLM tokens per video
    num_audio_tokens: int = Field(16, ge=1)  # LLM tokens per audio clip
    projector_type: ProjectorType = "perceiver"
    projector_layers: int = Field(2, ge=1)  # perceiver layers
    projector_heads: int = Field(4, ge=1)  # perceiver heads (must divide the LLM's hidden size)
    cross_attention_every: int = Field(2, ge=0)  # a fusion block after every n-th decoder layer; 0: none
    cross_attention_heads: int = Field(4, ge=1)  # must divide the LLM's hidden size
    asr_loss_weight: float = Field(0.1, ge=0)  # seed 000's weight of the CTC loss
    freeze_llm: bool = False  # train encoders, projectors and fusion (and LoRA adapters) only
    use_model_parallel: bool = False
    device_map: dict[Literal["modalities", "llm"], DeviceSpec] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MultimodalConfig:
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities {self.modalities} names a modality twice")
        if self.device_map is not None:
            if not self.use_model_parallel:
                raise ValueError("device_map is set but use_model_parallel is false (set it true, or drop device_map)")
            missing = [p for p in DEVICE_MAP_PARTS if p not in self.device_map]
            if missing:
                raise ValueError(f"device_map: no device for {', '.join(missing)} (place both modalities and llm)")
        return self

    def num_tokens(self, modality: str) -> int:
        return getattr(self, TOKENS_FIELD[modality])


@dataclass
class MultimodalOutput:
    """``loss`` (what to minimise; None without labels and transcripts), ``lm_loss`` (the LLM's),
    ``asr_loss`` (CTC, unweighted; None without transcripts), ``logits`` (B, T, vocab)."""

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    asr_loss: torch.Tensor | None
    logits: torch.Tensor


def marker_ids(tokenizer, modality: str) -> tuple[int, int]:
    """The ids of ``modality``'s start and end markers (``<|image|>``, ``<|/image|>``) in ``tokenizer``."""
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r}: expected one of {list(MODALITIES)}")
    ids = []
    for token in BLOCKS[modality]:
        idx = tokenizer.convert_tokens_to_ids(token)
        if idx is None or (tokenizer.unk_token_id is not None and idx == tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {token} token (the {modality} marker)")
        ids.append(int(idx))
    return ids[0], ids[1]


def media_prompt_ids(tokenizer, modality: str, num_tokens: int) -> list[int]:
    """``[<|image|>] + [pad] * num_tokens + [<|/image|>]`` for ``modality`` (image / video / audio):
    the slot whose ``num_tokens`` placeholders the model fills with the projected media."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    start, end = marker_ids(tokenizer, modality)
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError("the tokenizer has no pad token (the media placeholders are pad tokens)")
    return [start] + [int(pad)] * num_tokens + [end]


def build_encoder(config: MultimodalConfig, modality: str) -> nn.Module:
    """The encoder of ``modality`` from its config (vision / video / audio)."""
    builders = {"image": build_vision_encoder, "video": build_video_encoder, "audio": build_audio_encoder}
    return builders[modality](getattr(config, ENCODER_FIELD[modality]))


def resolve_multimodal_device_map(config: MultimodalConfig) -> dict[str, torch.device] | None:
    """{``modalities``: device, ``llm``: device} for ``config``, or None when nothing is placed
    (``use_model_parallel`` false, or no GPU and no explicit map)."""
    if not config.use_model_parallel:
        return None
    spec = config.device_map
    if spec is None:
        gpus = torch.cuda.device_count()
        if gpus == 0:
            log.info("use_model_parallel: no CUDA GPU visible, nothing to place (the model stays on one device)")
            return None
        spec = {"modalities": "cuda:0", "llm": "cuda:1" if gpus > 1 else "cuda:0"}
    return {part: resolve_device(spec[part], f"device_map.{part}") for part in DEVICE_MAP_PARTS}


def base_llm(llm: nn.Module) -> nn.Module:
    """The XoronForCausalLM inside ``llm`` (itself, or the base model of a peft wrapper)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


class XoronMultimodalModel(nn.Module):
    """Encoders, projectors and fusion around an LLM (see the module docstring).

    ``tokenizer`` (or ``media_token_ids``: {modality: [start id, end id]}) gives the marker ids;
    ``encoders`` ({modality: module}) replaces built encoders (anything returning an
    ``EncoderOutput`` and having ``hidden_size``)."""

    def __init__(
        self,
        config: MultimodalConfig | Mapping,
        llm: nn.Module,
        tokenizer=None,
        *,
        media_token_ids: Mapping[str, Sequence[int]] | None = None,
        encoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        config = config if isinstance(config, MultimodalConfig) else MultimodalConfig.model_validate(config)
        self.config = config
        self.llm = llm
        base = base_llm(llm)
        d_model = int(base.config.hidden_size)
        if tokenizer is not None:
            media_token_ids = {m: marker_ids(tokenizer, m) for m in config.modalities}
        if media_token_ids is None:
            raise ValueError("XoronMultimodalModel needs the marker token ids: pass tokenizer= (or media_token_ids=)")
        missing = [m for m in config.modalities if m not in media_token_ids]
        if missing:
            raise ValueError(f"media_token_ids has no marker ids for {missing}")
        self.media_token_ids = {m: tuple(int(i) for i in media_token_ids[m]) for m in config.modalities}
        unknown = sorted(set(encoders or {}) - set(config.modalities))
        if unknown:
            raise ValueError(f"encoders given for {unknown}, which are not in modalities {config.modalities}")
        self.encoders = nn.ModuleDict()
        self.projectors = nn.ModuleDict()
        for m in config.modalities:
            enc = encoders[m] if encoders and m in encoders else build_encoder(config, m)
            self.encoders[m] = enc
            self.projectors[m] = build_projector(
                config.projector_type,
                int(enc.hidden_size),
                d_model,
                config.num_tokens(m),
                config.projector_layers,
                config.projector_heads,
            )
        layers = base.model.layers
        self.fusion = FusionLayers(
            fused_layer_indices(len(layers), config.cross_attention_every), d_model, config.cross_attention_heads
        )
        self.fusion.attach(layers)
        if config.freeze_llm:
            for name, param in llm.named_parameters():
                if "lora_" not in name:
                    param.requires_grad_(False)
        self.placement: Placement | None = None
        devices = resolve_multimodal_device_map(config)
        if devices is not None:
            self.placement = place_model(self, devices)

    # ------------------------------------------------------------------ placement / trainer hooks
    def placement_parts(self) -> dict[str, list[nn.Module]]:
        """``modalities`` (encoders, projectors) and ``llm`` (the LLM with its markers, and the fusion
        blocks), for :func:`~xoron_pipelines.model.placement.place_model`."""
        return {
            "modalities": [*self.encoders.values(), *self.projectors.values()],
            "llm": [self.llm, *self.fusion.blocks.values()],
        }

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """The LLM's decoder layers recompute in backward (transformers' switch; the fusion blocks,
        run by hooks outside the checkpointed ``forward``, keep their activations)."""
        base_llm(self.llm).activation_checkpointing_enable(**kwargs)

    def update_moe_bias(self) -> None:
        """Aux-loss-free balancing step of the LLM's and the encoders' MoE layers (after each step)."""
        for module in (base_llm(self.llm), *self.encoders.values()):
            if hasattr(module, "update_moe_bias"):
                module.update_moe_bias()

    def merge_lora(self) -> XoronMultimodalModel:
        """Fold a LoRA-wrapped LLM's adapters into its weights (in place; the fusion hooks stay)."""
        from xoron_pipelines.training.lora import merge_lora

        self.llm = merge_lora(self.llm)
        return self

    # ------------------------------------------------------------------ forward
    def _slots(self, input_ids: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, start positions) of ``modality``'s start markers, in marker order; checks each is
        followed by its placeholders and its end marker."""
        start_id, end_id = self.media_token_ids[modality]
        n = self.config.num_tokens(modality)
        rows, starts = (input_ids == start_id).nonzero(as_tuple=True)
        ends = starts + n + 1
        inside = ends < input_ids.shape[1]
        ok = inside.clone()
        ok[inside] = input_ids[rows[inside], ends[inside]] == end_id
        if not bool(ok.all()):
            k = int((~ok).nonzero()[0])
            raise ValueError(
                f"row {int(rows[k])}: the {modality} marker at position {int(starts[k])} is not followed by "
                f"{n} placeholders and its end marker (build the slot with media_prompt_ids; truncated?)"
            )
        return rows, starts

    def encode(self, modality: str, media: torch.Tensor, audio_lengths: torch.Tensor | None = None):
        """(encoder output, projected tokens (items, num_tokens, d_model)) of ``media``."""
        encoder = self.encoders[modality]
        out = encoder(media, audio_lengths) if modality == "audio" else encoder(media)
        return out, self.projectors[modality](out.features, out.mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        videos: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        transcripts: Sequence[str] | None = None,
    ) -> MultimodalOutput:
        given = {m: x for m, x in (("image", images), ("video", videos), ("audio", audio)) if x is not None}
        for m in given:
            if m not in self.encoders:
                raise ValueError(f"{m} media given, but {m} is not in modalities {self.config.modalities}")
        if transcripts is not None and audio is None:
            raise ValueError("transcripts given without audio")
        if audio_lengths is not None and audio is None:
            raise ValueError("audio_lengths given without audio")
        if not given:
            out = self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            return MultimodalOutput(out.loss, out.loss, None, out.logits)

        embedding = self.llm.get_input_embeddings()
        input_ids = input_ids.to(embedding.weight.device)
        embeds = embedding(input_ids)
        if labels is not None:
            labels = labels.to(input_ids.device)
        items: list[tuple[int, int, torch.Tensor]] = []  # (row, start, tokens) of every media item
        asr_loss = None
        aux_losses = []
        for m, media in given.items():
            enc_out, tokens = self.encode(m, media, audio_lengths)
            rows, starts = self._slots(input_ids, m)
            if tokens.shape[0] != rows.numel():
                raise ValueError(
                    f"{tokens.shape[0]} {m} item(s) given but input_ids hold {rows.numel()} {m} marker(s) "
                    f"({BLOCKS[m][0]}); give one item per marker, in marker order"
                )
            tokens = tokens.to(embeds.device, embeds.dtype)
            n = tokens.shape[1]
            positions = starts[:, None] + 1 + torch.arange(n, device=starts.device)
            flat_rows = rows[:, None].expand(-1, n).reshape(-1)
            embeds = embeds.index_put((flat_rows, positions.reshape(-1)), tokens.reshape(-1, tokens.shape[-1]))
            if labels is not None:
                labels = labels.index_put((flat_rows, positions.reshape(-1)), labels.new_tensor(-100))
            items += [(int(r), int(s), t) for r, s, t in zip(rows.tolist(), starts.tolist(), tokens, strict=True)]
            if m == "audio" and transcripts is not None:
                if "ctc_logits" not in enc_out.extras:
                    raise ValueError("transcripts given but the audio encoder has no CTC head (no ctc_logits)")
                asr_loss = ctc_loss(enc_out, list(transcripts))
            if isinstance(enc_out.extras.get("aux_loss"), torch.Tensor):
                aux_losses.append(enc_out.extras["aux_loss"])

        media_kv, visible = self._fusion_inputs(items, input_ids.shape)
        with self.fusion.attend(media_kv, visible):
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
        lm_loss = out.loss
        loss = lm_loss
        extra = []
        if asr_loss is not None:
            extra.append(self.config.asr_loss_weight * asr_loss)
        extra += aux_losses
        for term in extra:
            term = term.to(out.logits.device)
            loss = term if loss is None else loss + term
        return MultimodalOutput(loss, lm_loss, asr_loss, out.logits)

    def _fusion_inputs(self, items, shape) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per row, the tokens of its media items concatenated (B, M, D, zero padded) and which of
        them each position sees (B, T, M): the items whose start marker lies before it."""
        if not self.fusion.blocks or not items:
            return None, None
        batch, length = shape
        per_row: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(batch)]
        for row, start, tokens in items:
            per_row[row].append((start, tokens))
        width = max(sum(t.shape[0] for _, t in row) for row in per_row)
        like = items[0][2]
        kv, item_start = [], []
        for row in per_row:
            row.sort(key=lambda item: item[0])
            tokens = torch.cat([t for _, t in row]) if row else like.new_zeros(0, like.shape[-1])
            kv.append(F.pad(tokens, (0, 0, 0, width - tokens.shape[0])))
            starts = [s for s, t in row for _ in range(t.shape[0])]
            item_start.append(starts + [length] * (width - len(starts)))  # padding: seen by no position
        item_start = torch.tensor(item_start, device=like.device)
        visible = torch.arange(length, device=like.device)[None, :, None] > item_start[:, None, :]
        return torch.stack(kv), visible


__all__ = [
    "DEVICE_MAP_PARTS",
    "MODALITIES",
    "MultimodalConfig",
    "MultimodalOutput",
    "XoronMultimodalModel",
    "base_llm",
    "build_encoder",
    "marker_ids",
    "media_prompt_ids",
    "resolve_multimodal_device_map",
]
