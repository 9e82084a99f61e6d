"""The multimodal Xoron model: media encoders -> projectors -> LLM (markers + cross-attention fusion).

Images, videos and audio clips enter the LLM in two ways at once (seed 003's architecture):

* **Modality markers** (LLaVA-style). A prompt holds, per media item, :func:`media_prompt_ids`:
  ``<|image|>``, ``num_vision_tokens`` placeholder (pad) tokens, ``<|/image|>`` (``<|video|>`` /
  ``<|audio|>`` likewise). The item's encoder features go through its modality's projector
  (:mod:`.projector`: Perceiver resampler or MLP) to exactly that many LLM-width tokens, which
  replace the placeholders' embeddings. The media of a batch are given per modality in marker
  order: row-major over the batch, left to right within a row (``images[k]`` fills the k-th
  ``<|image|>`` of the batch), so a row may hold several items or none. The labels of placeholder
  positions are ignored (-100): the model is never asked to predict media; their
  ``attention_mask`` is 1 (they are pad ids, but a mask built as ``ids != pad`` must not hide them).
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

    def to_dict(self) -> dict:
        """Every knob as JSON-ready data (sub-configs included), as ``PretrainedConfig.to_dict``."""
        return self.model_dump(mode="json")


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
        """Fold a LoRA-wrapped LLM's adapters into its weights (in place; the fusion hooks stay, the
        LLM stays frozen under ``freeze_llm`` and placed under a device map)."""
        from xoron_pipelines.training.lora import merge_lora

        self.llm = merge_lora(self.llm)
        if self.config.freeze_llm:
            self.llm.requires_grad_(False)
        if self.placement is not None:  # the hooks were on the peft wrapper
            self.placement.remove()
            self.placement = place_model(self, self.placement.devices)
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
        given = self._given(images, videos, audio, audio_lengths, transcripts)
        if not given:
            out = self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            return MultimodalOutput(out.loss, out.loss, None, out.logits)
        prep = self._prepare(input_ids, labels, given, audio_lengths, transcripts)
        with self.fusion.attend(prep.media, prep.visible):
            out = self.llm(inputs_embeds=prep.embeds, attention_mask=prep.unmask(attention_mask), labels=prep.labels)
        loss = out.loss
        extra = [] if prep.asr_loss is None else [self.config.asr_loss_weight * prep.asr_loss]
        for term in extra + prep.aux_losses:
            term = term.to(out.logits.device)
            loss = term if loss is None else loss + term
        return MultimodalOutput(loss, out.loss, prep.asr_loss, out.logits)

    def _given(self, images, videos, audio, audio_lengths, transcripts) -> dict[str, torch.Tensor]:
        given = {m: x for m, x in (("image", images), ("video", videos), ("audio", audio)) if x is not None}
        for m in given:
            if m not in self.encoders:
                raise ValueError(f"{m} media given, but {m} is not in modalities {self.config.modalities}")
        if transcripts is not None and audio is None:
            raise ValueError("transcripts given without audio")
        if audio_lengths is not None and audio is None:
            raise ValueError("audio_lengths given without audio")
        return given

    def _prepare(self, input_ids, labels, given, audio_lengths, transcripts) -> _Prepared:
        """Encode and project the media, fill their slots, mask their labels, build the fusion inputs."""
        embedding = self.llm.get_input_embeddings()
        input_ids = input_ids.to(embedding.weight.device)
        embeds = embedding(input_ids)
        if labels is not None:
            labels = labels.to(input_ids.device)
        items: list[tuple[int, int, torch.Tensor]] = []  # (row, start, tokens) of every media item
        slots: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, positions) of the placeholders
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
            positions = (starts[:, None] + 1 + torch.arange(n, device=starts.device)).reshape(-1)
            flat_rows = rows[:, None].expand(-1, n).reshape(-1)
            embeds = embeds.index_put((flat_rows, positions), tokens.reshape(-1, tokens.shape[-1]))
            slots.append((flat_rows, positions))
            if labels is not None:
                labels = labels.index_put((flat_rows, positions), labels.new_tensor(-100))
            items += [(int(r), int(s), t) for r, s, t in zip(rows.tolist(), starts.tolist(), tokens, strict=True)]
            if m == "audio" and transcripts is not None:
                if "ctc_logits" not in enc_out.extras:
                    raise ValueError("transcripts given but the audio encoder has no CTC head (no ctc_logits)")
                asr_loss = ctc_loss(enc_out, list(transcripts))
            if isinstance(enc_out.extras.get("aux_loss"), torch.Tensor):
                aux_losses.append(enc_out.extras["aux_loss"])
        media_kv, item_start = self._fusion_inputs(items, input_ids.shape[0], input_ids.shape[1])
        visible = None
        if media_kv is not None:
            visible = torch.arange(input_ids.shape[1], device=item_start.device)[None, :, None] > item_start[:, None, :]
        rows, positions = (torch.cat(parts) for parts in zip(*slots, strict=True))
        return _Prepared(embeds, labels, media_kv, visible, item_start, asr_loss, aux_losses, (rows, positions))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        videos: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """KV-cached decoding (:func:`xoron_pipelines.model.generation.generate`'s options: greedy by
        default, ``max_new_tokens``, ``eos_token_id``, sampling ...) from a (left-padded) prompt with
        its media: ``input_ids`` followed by the new tokens (B, T + n). Every new token sees all the
        media of its row (their markers are in the prompt)."""
        from xoron_pipelines.model.generation import generate

        given = self._given(images, videos, audio, audio_lengths, None)
        if not given:
            return generate(base_llm(self.llm), input_ids, attention_mask=attention_mask, **kwargs)
        return generate(_MediaPrompt(self, given, audio_lengths), input_ids, attention_mask=attention_mask, **kwargs)

    def _fusion_inputs(self, items, batch: int, length: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per row, the tokens of its media items concatenated (B, M, D, zero padded) and the start
        marker position of the item each belongs to (B, M; ``length`` for padding, seen by no position)."""
        if not self.fusion.blocks or not items:
            return None, None
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
            item_start.append(starts + [length] * (width - len(starts)))
        return torch.stack(kv), torch.tensor(item_start, device=like.device)


@dataclass
class _Prepared:
    """The LLM's inputs for a forward with media (see :meth:`XoronMultimodalModel._prepare`)."""

    embeds: torch.Tensor
    labels: torch.Tensor | None
    media: torch.Tensor | None  # fusion keys / values (B, M, D)
    visible: torch.Tensor | None  # (B, T, M)
    item_start: torch.Tensor | None  # (B, M)
    asr_loss: torch.Tensor | None
    aux_losses: list[torch.Tensor]
    slots: tuple[torch.Tensor, torch.Tensor]  # (rows, positions) of the filled placeholders

    def unmask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """``attention_mask`` with the filled placeholders marked real (1): they are pad tokens in
        ``input_ids``, so a mask built as ``ids != pad`` would hide the media."""
        if attention_mask is None:
            return None
        rows, positions = (t.to(attention_mask.device) for t in self.slots)
        return attention_mask.index_put((rows, positions), attention_mask.new_ones(()))


class _MediaPrompt:
    """What :func:`~xoron_pipelines.model.generation.generate` drives for a prompt with media: the
    first (prefill) call runs the prompt with its media filled in and fused; each later call feeds
    the new token through the LLM's KV cache, fusing every media item of its row."""

    def __init__(self, model: XoronMultimodalModel, given: dict[str, torch.Tensor], audio_lengths) -> None:
        self.model, self.given, self.audio_lengths = model, given, audio_lengths
        llm = base_llm(model.llm)
        self.config, self.generation_config = llm.config, getattr(llm, "generation_config", None)
        self.training = model.training
        self.prepared: _Prepared | None = None

    def eval(self) -> None:
        self.model.eval()

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def __call__(self, input_ids, attention_mask=None, past_key_values=None, use_cache=True):
        llm, fusion = self.model.llm, self.model.fusion
        if self.prepared is None:
            self.prepared = prep = self.model._prepare(input_ids, None, self.given, self.audio_lengths, None)
            with fusion.attend(prep.media, prep.visible):
                return llm(inputs_embeds=prep.embeds, attention_mask=prep.unmask(attention_mask), use_cache=True)
        prep = self.prepared
        visible = None
        if prep.media is not None:
            valid = prep.item_start < prep.embeds.shape[1]  # the row's items, not padding
            visible = valid[:, None, :].expand(-1, input_ids.shape[1], -1)
        with fusion.attend(prep.media, visible):
            return llm(
                input_ids=input_ids,
                attention_mask=prep.unmask(attention_mask),
                past_key_values=past_key_values,
                use_cache=True,
            )


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
