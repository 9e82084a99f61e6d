"""XoronMultimodalModel: markers filled at the right places, the LLM unchanged without media, ASR
loss weight, freeze_llm, LoRA inside, the device map, gradient checkpointing."""

from __future__ import annotations

import copy

import pydantic
import pytest
import torch

from tests.export.export_helpers import build_tokenizer
from tests.model.multimodal_helpers import (
    TOKENS,
    mixed_batch,
    open_gates,
    slot,
    tiny_config,
    tiny_llm,
    tiny_model,
    twin,
)
from xoron_pipelines.model.multimodal import MultimodalConfig, XoronMultimodalModel, marker_ids, media_prompt_ids
from xoron_pipelines.training.lora import LoraSettings, apply_lora

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def batch(tok):
    return mixed_batch(tok)


def _embeds_into_llm(model, **inputs) -> tuple[object, torch.Tensor]:
    """(output, the inputs_embeds the LLM's base model received)."""
    seen = {}

    def grab(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    handle = model.llm.model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        out = model(**inputs)
    finally:
        handle.remove()
    return out, seen["embeds"]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------ prompt slots
def test_media_prompt_ids(tok):
    ids = media_prompt_ids(tok, "audio", 3)
    start, end = marker_ids(tok, "audio")
    assert ids == [start, tok.pad_token_id, tok.pad_token_id, tok.pad_token_id, end]
    assert tok.convert_ids_to_tokens([start, end]) == ["<|audio|>", "<|/audio|>"]
    assert len({marker_ids(tok, m) for m in ("image", "video", "audio")}) == 3
    with pytest.raises(ValueError, match="modality 'text'"):
        media_prompt_ids(tok, "text", 3)
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        media_prompt_ids(tok, "image", 0)


# ------------------------------------------------------------------ the LLM unchanged without media
def test_without_media_the_output_is_the_llms_exactly(tok, batch):
    model = tiny_model(tok)
    open_gates(model)  # even with fusion trained
    ids, labels = batch["input_ids"], batch["labels"]
    ref = model.llm(input_ids=ids, labels=labels)
    out = model(ids, labels=labels)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)
    assert out.asr_loss is None
    model(**batch)  # a forward with media leaves nothing behind: the plain LLM is plain afterwards
    assert torch.equal(model.llm(input_ids=ids).logits, ref.logits)


# ------------------------------------------------------------------ markers
def test_media_fill_the_placeholders_after_each_start_marker(tok, batch):
    """Row 0 holds two images, row 1 none, row 2 a video and an audio clip: each item's projected
    tokens sit right after its start marker; every other position keeps its token embedding."""
    model = tiny_model(tok)
    out, embeds = _embeds_into_llm(model, **batch)
    ids = batch["input_ids"]
    expected = model.llm.get_input_embeddings()(ids).clone()
    _, image_tokens = model.encode("image", batch["images"])
    _, video_tokens = model.encode("video", batch["videos"])
    _, audio_tokens = model.encode("audio", batch["audio"], batch["audio_lengths"])
    placed = {(0, 0): image_tokens[0], (0, 1): image_tokens[1], (2, 0): video_tokens[0], (2, 1): audio_tokens[0]}
    for (row, k), tokens in placed.items():
        modality = {4: "image", 3: "video", 2: "audio"}[tokens.shape[0]]
        start = [i for i, t in enumerate(ids[row].tolist()) if t == marker_ids(tok, modality)[0]][
            k if modality == "image" else 0
        ]
        expected[row, start + 1 : start + 1 + TOKENS[modality]] = tokens
        assert ids[row, start + 1 + TOKENS[modality]] == marker_ids(tok, modality)[1]
    torch.testing.assert_close(embeds, expected, rtol=0, atol=0)
    assert torch.equal(embeds[1], model.llm.get_input_embeddings()(ids[1]))
    # fusion gates start at 0: the LLM on those embeddings, exactly
    ref = model.llm(inputs_embeds=embeds)
    assert torch.equal(out.logits, ref.logits)


def test_placeholder_labels_are_ignored(tok, batch):
    model = tiny_model(tok)
    out, embeds = _embeds_into_llm(model, **batch)
    labels = batch["labels"].clone()
    pad = tok.pad_token_id
    labels[labels == pad] = -100  # every placeholder is a pad token here, and no other token is
    assert out.lm_loss is not None
    torch.testing.assert_close(out.lm_loss, model.llm(inputs_embeds=embeds, labels=labels).loss, rtol=0, atol=0)


def test_fusion_changes_only_rows_with_media(tok, batch):
    model = tiny_model(tok)
    open_gates(model)
    out, embeds = _embeds_into_llm(model, **batch)
    plain = model.llm(inputs_embeds=embeds).logits
    assert torch.equal(out.logits[1], plain[1])  # row 1 has no media
    assert torch.equal(out.logits[:, :2], plain[:, :2])  # BOS and the first start marker see nothing yet
    assert not torch.allclose(out.logits[0, 2:], plain[0, 2:])


def test_bad_media_inputs_are_clear_errors(tok, batch):
    model = tiny_model(tok)
    with pytest.raises(ValueError, match=r"1 image item\(s\) given but input_ids hold 2 image marker"):
        model(batch["input_ids"], images=batch["images"][:1])
    cut = batch["input_ids"][:, :4]  # row 0's image slot is cut short
    with pytest.raises(ValueError, match="row 0: the image marker at position 1 is not followed by 4 placeholders"):
        model(cut, images=batch["images"][:1])
    with pytest.raises(ValueError, match="transcripts given without audio"):
        model(batch["input_ids"], transcripts=["a"])
    image_only = tiny_model(tok, modalities=["image"])
    with pytest.raises(ValueError, match=r"audio media given, but audio is not in modalities \['image'\]"):
        image_only(batch["input_ids"], audio=batch["audio"])
    with pytest.raises(ValueError, match="needs the marker token ids"):
        XoronMultimodalModel(tiny_config(), tiny_llm(tok))


# ------------------------------------------------------------------ ASR
def test_asr_loss_weight_scales_the_ctc_heads_gradient_only(tok, batch):
    """loss = lm_loss + w * asr_loss. The CTC head is reached by the ASR loss alone: its gradient is
    w times the ASR loss's (zero at w = 0); the LLM's head does not see the ASR loss at all."""
    runs = {}
    for weight in (0.0, 0.5):
        model = tiny_model(tok, asr_loss_weight=weight).train()
        out = model(**batch, transcripts=["hi"])
        torch.testing.assert_close(out.loss, out.lm_loss + weight * out.asr_loss, rtol=0, atol=0)
        head = model.encoders["audio"].ctc_head.weight
        (asr_grad,) = torch.autograd.grad(out.asr_loss, head, retain_graph=True)
        out.loss.backward()
        runs[weight] = (head.grad.clone(), asr_grad, model.llm.lm_head.weight.grad.clone(), out.asr_loss.detach())
    assert torch.equal(runs[0.0][0], torch.zeros_like(runs[0.0][0]))
    assert runs[0.5][1].abs().max() > 0
    torch.testing.assert_close(runs[0.5][0], 0.5 * runs[0.5][1])
    torch.testing.assert_close(runs[0.0][2], runs[0.5][2], rtol=0, atol=0)
    assert torch.equal(runs[0.0][3], runs[0.5][3])


# ------------------------------------------------------------------ freezing, LoRA
def test_freeze_llm_trains_encoders_projectors_and_fusion_only(tok, batch):
    model = tiny_model(tok, freeze_llm=True).train()
    assert not any(p.requires_grad for p in model.llm.parameters())
    model(**batch).loss.backward()
    grads = _grads(model)
    assert not [n for n in grads if n.startswith("llm.")]
    for part in ("encoders.image.", "encoders.video.", "encoders.audio.", "projectors.", "fusion."):
        assert any(n.startswith(part) for n in grads), part


def test_lora_wrapped_llm_inside(tok, batch):
    llm = apply_lora(tiny_llm(tok), LoraSettings(r=4, alpha=8, dropout=0.0, train_lora_only=True))
    model = tiny_model(tok, llm=llm, freeze_llm=True).train()
    ids = batch["input_ids"]
    assert torch.equal(model(ids).logits, llm(input_ids=ids).logits)  # no media: the peft model itself
    model(**batch).loss.backward()
    grads = _grads(model)
    lora_b = [n for n in grads if "lora_B" in n]
    assert lora_b and all(grads[n].abs().max() > 0 for n in lora_b)
    assert not [n for n in grads if n.startswith("llm.") and "lora_" not in n]  # base weights frozen
    model.eval()
    with torch.no_grad():  # adapters that do something, then merged: same output, plain LLM
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
        before = model(**batch).logits
        model.merge_lora()
        assert not hasattr(model.llm, "get_base_model")
        assert not any(p.requires_grad for p in model.llm.parameters())  # freeze_llm holds after the merge
        torch.testing.assert_close(model(**batch).logits, before, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ device map, checkpointing
def test_cpu_device_map_gives_identical_outputs_and_gradients(tok, batch):
    model = tiny_model(tok).train()
    open_gates(model)
    placed = twin(model, use_model_parallel=True, device_map={"modalities": "cpu", "llm": "cpu"}).train()
    assert placed.placement is not None and set(placed.placement.devices) == {"modalities", "llm"}
    assert model.placement is None
    outs = []
    for m in (model, placed):
        out = m(**batch, transcripts=["hi"])
        out.loss.backward()
        outs.append((out, _grads(m)))
    (a, ga), (b, gb) = outs
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)


def test_device_map_is_validated():
    with pytest.raises(pydantic.ValidationError, match=r"cuda:7 asks for a GPU but"):
        MultimodalConfig.model_validate(
            {"use_model_parallel": True, "device_map": {"modalities": "cpu", "llm": "cuda:7"}}
        )
    with pytest.raises(pydantic.ValidationError, match="use_model_parallel is false"):
        MultimodalConfig.model_validate({"device_map": {"modalities": "cpu", "llm": "cpu"}})
    with pytest.raises(pydantic.ValidationError, match="no device for llm"):
        MultimodalConfig.model_validate({"use_model_parallel": True, "device_map": {"modalities": "cpu"}})
    with pytest.raises(pydantic.ValidationError, match="generators"):
        MultimodalConfig.model_validate({"use_model_parallel": True, "device_map": {"generators": "cpu"}})


def test_use_model_parallel_without_a_gpu_places_nothing(tok, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert tiny_model(tok, use_model_parallel=True).placement is None


def test_gradient_checkpointing_recomputes_the_fusion(tok, batch):
    model = tiny_model(tok).train()
    open_gates(model)
    ckpt = twin(model).train()
    ckpt.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in ckpt.llm.model.layers)
    results = []
    for m in (model, ckpt):
        out = m(**batch)
        out.loss.backward()
        results.append((out.loss.detach(), _grads(m)))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7)


def test_config_defaults_are_the_cpu_preset_and_slots_match(tok):
    cfg = MultimodalConfig()
    assert cfg.modalities == ["image", "video", "audio"] and cfg.num_vision_tokens == 16
    assert cfg.projector_type == "perceiver" and cfg.asr_loss_weight == 0.1
    assert len(slot(tok, "image")) == TOKENS["image"] + 2


def test_video_moe_balance_loss_and_bias_updates_reach_the_encoder(tok, batch):
    """The video encoder's temporal-MoE balance loss (aux_loss_coef) joins the loss, and
    update_moe_bias steps the encoder's router biases as well as the LLM's."""
    video = {**tiny_config().video.model_dump(), "use_video_temporal_moe": True, "aux_loss_coef": 0.5}
    model = tiny_model(tok, video=video).train()
    out = model(**batch)
    aux = model.encode("video", batch["videos"])[0].extras["aux_loss"]
    assert aux > 0
    torch.testing.assert_close(out.loss, out.lm_loss + aux)
    biases = [m.gate.e_score_correction_bias.clone() for m in model.encoders["video"].moe_layers()]
    model.update_moe_bias()
    after = [m.gate.e_score_correction_bias for m in model.encoders["video"].moe_layers()]
    assert any(not torch.equal(a, b) for a, b in zip(after, biases, strict=True))


def test_generate_with_media_matches_greedy_full_forwards(tok, batch):
    """KV-cached decoding with media (fusion on the cached steps too) gives the tokens that greedy
    argmax over full multimodal forwards gives; without media it is the LLM's own generate."""
    model = tiny_model(tok)
    open_gates(model, 2.0)
    media = {k: batch[k] for k in ("images", "videos", "audio", "audio_lengths")}
    ids = batch["input_ids"]
    got = model.generate(ids, **media, max_new_tokens=4, eos_token_id=[])
    expected = ids
    with torch.no_grad():
        for _ in range(4):
            nxt = model(expected, **media).logits[:, -1].argmax(-1)
            expected = torch.cat((expected, nxt[:, None]), dim=1)
    assert torch.equal(got, expected)
    plain = model.generate(ids, max_new_tokens=4, eos_token_id=[])
    assert torch.equal(plain, model.llm.generate(ids, max_new_tokens=4, eos_token_id=[]))
    assert not torch.equal(plain[0], got[0]) and torch.equal(plain[1], got[1])  # row 1 has no media


def test_cached_decoding_step_fuses_the_media_like_a_full_forward(tok, batch):
    from xoron_pipelines.model.multimodal import _MediaPrompt

    model = tiny_model(tok)
    open_gates(model, 2.0)
    media = {k: batch[k] for k in ("images", "videos", "audio", "audio_lengths")}
    ids = batch["input_ids"]
    nxt = torch.tensor([[7], [8], [9]])
    with torch.no_grad():
        full = model(torch.cat((ids, nxt), dim=1), **media).logits[:, -1]
        prompt = _MediaPrompt(
            model, model._given(media["images"], media["videos"], media["audio"], None, None), media["audio_lengths"]
        )
        mask = torch.ones_like(ids)
        cache = prompt(ids, attention_mask=mask, use_cache=True).cache
        step = prompt(nxt, attention_mask=torch.cat((mask, torch.ones_like(nxt)), dim=1), past_key_values=cache).logits[
            :, -1
        ]
        plain = model.llm(torch.cat((ids, nxt), dim=1)).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(step[0], plain[0], atol=1e-3)


def test_a_deep_copy_fuses_with_its_own_blocks(tok, batch):
    model = tiny_model(tok)
    open_gates(model)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(clone(**batch).logits, model(**batch).logits)
        before = model(**batch).logits
        open_gates(clone, -0.3)  # the copy's gates are the copy's own
        assert torch.equal(model(**batch).logits, before)
        assert not torch.allclose(clone(**batch).logits, before)


def test_the_answer_learned_from_the_image_alone(tok):
    """Two prompts with identical ids differ only in their image (red or blue); after a few steps
    the model names the colour - which the blind LLM, seeing the same ids, cannot."""
    torch.manual_seed(0)
    model = tiny_model(tok).train()
    ids = torch.tensor([[tok.bos_token_id, *slot(tok, "image"), 7, 0]] * 2)
    answers = torch.tensor([11, 12])  # red -> 11, blue -> 12
    ids[:, -1] = answers
    labels = torch.full_like(ids, -100)
    labels[:, -1] = answers
    images = torch.zeros(2, 3, 16, 16)
    images[0, 0], images[1, 2] = 1.0, 1.0
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        model(ids, labels=labels, images=images).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        guess = model(ids, images=images).logits[:, -2].argmax(-1)
        blind = model(ids).logits[:, -2].argmax(-1)
    assert torch.equal(guess, answers)
    assert blind[0] == blind[1]  # the same ids without the image: one answer for both


def test_a_pad_based_attention_mask_does_not_hide_the_media(tok, batch):
    """Placeholders are pad ids: an attention mask built as ``ids != pad`` still lets the LLM see
    the media (the model marks the filled slots real), here and in generate's cached steps."""
    model = tiny_model(tok)
    open_gates(model)
    media = {k: batch[k] for k in ("images", "videos", "audio", "audio_lengths")}
    ids = batch["input_ids"]
    pad_mask = (ids != tok.pad_token_id).long()
    assert pad_mask.min() == 0
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=pad_mask, **media).logits, model(ids, **media).logits)
    got = model.generate(ids, attention_mask=pad_mask, **media, max_new_tokens=3, eos_token_id=[])
    assert torch.equal(got, model.generate(ids, **media, max_new_tokens=3, eos_token_id=[]))


@pytest.mark.parametrize(
    ("gpus", "expected"), [(2, ("cuda:0", "cuda:1")), (4, ("cuda:0", "cuda:1")), (1, ("cuda:0",) * 2)]
)
def test_default_device_map_is_seed_000s_layout(monkeypatch, gpus, expected):
    """use_model_parallel without a map: encoders + projectors on GPU 0, the LLM (markers, fusion)
    on GPU 1; one GPU holds both. An explicit map naming a visible GPU resolves to it."""
    from xoron_pipelines.model.multimodal import resolve_multimodal_device_map

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    plan = resolve_multimodal_device_map(MultimodalConfig(use_model_parallel=True))
    assert (str(plan["modalities"]), str(plan["llm"])) == expected
    explicit = MultimodalConfig(use_model_parallel=True, device_map={"modalities": "cuda:0", "llm": "cpu"})
    assert {k: str(v) for k, v in resolve_multimodal_device_map(explicit).items()} == {
        "modalities": "cuda:0",
        "llm": "cpu",
    }
    assert resolve_multimodal_device_map(MultimodalConfig()) is None
