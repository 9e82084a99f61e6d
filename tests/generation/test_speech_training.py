"""Speech training: batches and LLM features, the TTS loss weight, alignment modes, seeding,
and clear errors on bad rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.speech_helpers import audio_table, llm, tokenizer
from xoron_pipelines.data.media import encode_audio
from xoron_pipelines.model.speech import SpeechConfig, SpeechModel, uniform_durations
from xoron_pipelines.training import tts

#: a model small enough for unit tests (hop 32: 500 frames a second)
TINY = dict(
    hidden_size=16, text_layers=1, frame_layers=1, audio_n_mels=16, n_fft=256, hop_length=64,
    upsample_rates=[8, 8], upsample_initial_channels=8, resblock_kernel_sizes=[3], resblock_dilations=[1],
    audio_num_speakers=8, audio_speaker_embed_dim=8, prompt_frames=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def items():
    df = audio_table(8, 0, 2, 0, max_words=2)
    return tts.prepare_items(df, llm(), tokenizer(), 16000)


def _model(items, **kw) -> SpeechModel:
    torch.manual_seed(0)
    cfg = SpeechConfig(**{**TINY, **kw}, llm_hidden_size=32, speakers=tts.speaker_table(items))
    return SpeechModel(cfg)


def _batch(items, model, seed=0):
    by = {}
    for i, it in enumerate(items):
        by.setdefault(it.speaker, []).append(i)
    index = {s: i for i, s in enumerate(model.config.speakers)}
    return tts.make_batch(items, range(4), index, by, np.random.default_rng(seed), model.config.hop_length)


def test_text_features_batched_equal_one_by_one():
    model, tok = llm(), tokenizer()
    texts = ["red", "yellow triangle two", "go"]
    batched = tts.text_features(model, tok, texts, batch_size=3)
    for text in texts:
        alone = tts.text_features(model, tok, [text], batch_size=1)[text]
        assert batched[text][0].shape[0] == len(tok(text, add_special_tokens=False)["input_ids"])
        torch.testing.assert_close(batched[text][0], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[text][1], alone[1])


def test_reference_is_another_clip_of_the_same_speaker(items):
    model = _model(items)
    batch = _batch(items, model)
    for b in range(4):
        ref = batch["ref_wave"][b, : batch["ref_lengths"][b]]
        same_speaker = [it for it in items if it.speaker == items[b].speaker and it is not items[b]]
        assert any(
            it.wave.size >= ref.numel() and np.array_equal(ref.numpy(), it.wave[: ref.numel()]) for it in same_speaker
        )


def test_tts_loss_weight_scales_the_stage_loss_and_its_gradients(items):
    grads = {}
    for weight in (1.0, 0.25):
        model = _model(items)
        cfg = tts.TTSTrainConfig(tts_loss_weight=weight, segment_frames=16)
        losses = tts.tts_losses(model, _batch(items, model), cfg, np.random.default_rng(0))
        assert float(losses["loss"].detach()) == pytest.approx(weight * float(losses["tts"].detach()), rel=1e-6)
        losses["loss"].backward()
        grads[weight] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(grads[0.25], 0.25 * grads[1.0], rtol=1e-4, atol=1e-7)
    # weight 0: the stage trains nothing (AdamW without weight decay takes no step on zero gradients)
    model = _model(items)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tts.train_tts(
        model, items, tts.TTSTrainConfig(steps=2, batch_size=4, tts_loss_weight=0.0, segment_frames=16, progress=False)
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_alignment_mas_recovers_planted_durations_uniform_otherwise(items):
    """Frames drawn at planted durations around the slots' means: MAS finds the durations;
    use_mas: false spreads the frames evenly."""
    durations = torch.tensor([[3, 1, 5, 2, 4]])
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(1, 5, 16, generator=gen) * 3
    mel = torch.repeat_interleave(means[0], durations[0], dim=0).T[None] + 0.1 * torch.randn(1, 16, 15, generator=gen)
    slot_mask, frame_mask = torch.ones(1, 5, dtype=torch.bool), torch.ones(1, 15, dtype=torch.bool)
    assert torch.equal(_model(items).align(means, slot_mask, mel, frame_mask), durations)
    uniform = _model(items, use_mas=False).align(means, slot_mask, mel, frame_mask)
    assert uniform[0].tolist() == uniform_durations(5, 15).tolist() == [3, 3, 3, 3, 3]


def test_training_is_seeded_and_lowers_the_loss(items):
    cfg = tts.TTSTrainConfig(steps=12, batch_size=4, segment_frames=16, log_every=1, progress=False, learning_rate=3e-3)
    a, b, c = _model(items), _model(items), _model(items)
    hist = tts.train_tts(a, items, cfg)
    tts.train_tts(b, items, cfg)
    tts.train_tts(c, items, cfg.model_copy(update={"seed": 1}))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert len(hist) == 12

    def fixed_batch_loss(model):  # the same batch, windows and noise before and after training
        torch.manual_seed(0)
        with torch.no_grad():
            return float(tts.tts_losses(model, _batch(items, model), cfg, np.random.default_rng(0))["tts"])

    assert fixed_batch_loss(a) < fixed_batch_loss(_model(items))


def test_bad_rows_are_named():
    df = audio_table(2, 0, 1, 0)
    bad = df.copy()
    bad.loc[1, "caption"] = "  "
    with pytest.raises(ValueError, match="row 'train-0001': empty transcript"):
        tts.decode_rows(bad, 16000)
    bad = df.copy()
    bad.loc[0, "media"] = b"not a wav"
    with pytest.raises(ValueError, match="row 'train-0000': undecodable audio"):
        tts.decode_rows(bad, 16000)
    bad = df.copy()
    bad.loc[0, "modality"] = "image"
    with pytest.raises(ValueError, match="row 'train-0000': modality 'image'"):
        tts.decode_rows(bad, 16000)
    # another sample rate is resampled to the model's
    other = df.copy()
    other.loc[0, "media"] = encode_audio(np.zeros(8000, np.float32) + 0.1, 8000)
    assert tts.decode_rows(other, 16000)[0][1].size == 16000


def test_too_many_speakers_for_the_table_is_a_clear_error(items):
    with pytest.raises(ValueError, match="2 training speakers exceed audio_num_speakers=1"):
        SpeechConfig(**{**TINY, "audio_num_speakers": 1}, speakers=tts.speaker_table(items))


def test_pitch_targets_and_pitch_weight(items):
    """The batch's f0 is each clip's frame_pitch track; pitch_weight adds exactly the pitch term
    to the stage loss, and with 0 the pitch head learns nothing."""
    from xoron_pipelines.model.speech import frame_pitch

    model = _model(items)
    batch = _batch(items, model)
    for b in range(4):
        track = frame_pitch(items[b].wave, 16000, model.config.hop_length)[0]
        assert torch.equal(batch["f0"][b, : track.size], torch.from_numpy(track)) and (track > 0).any()
    totals = {}
    for weight in (1.0, 0.0):
        model = _model(items)
        torch.manual_seed(0)
        cfg = tts.TTSTrainConfig(pitch_weight=weight, segment_frames=16)
        losses = tts.tts_losses(model, _batch(items, model), cfg, np.random.default_rng(0))
        totals[weight] = (float(losses["tts"].detach()), float(losses["pitch"].detach()))
        losses["loss"].backward()
        assert (model.pitch_out.weight.grad.abs().sum() > 0) == (weight > 0)
    assert totals[1.0][0] - totals[0.0][0] == pytest.approx(totals[1.0][1], rel=1e-4)


def test_first_alignment_puts_the_pauses_on_the_blanks(items):
    """Untrained, the alignment prior is silence on the blanks and a speech level on the tokens:
    MAS on real clips gives the tokens the loud frames and the blanks the quiet ones (from random
    means one slot, often a blank, takes every spoken frame and the words never reach their
    tokens)."""
    model = _model(items)
    batch = _batch(items, model)
    mel, frame_mask = model.mel_and_mask(batch["wave"], batch["lengths"])
    speaker = model.speaker_vector(batch["speaker_ids"])
    _, slot_mask, means, _ = model.encode_text(batch["llm_hidden"], batch["token_embeds"], batch["token_mask"], speaker)
    durations = model.align(means, slot_mask, mel, frame_mask)
    for b in range(4):
        n = int(frame_mask[b].sum())
        owner = torch.repeat_interleave(torch.arange(durations.shape[1]), durations[b])[:n]
        energy = torch.logsumexp(mel[b, :, :n], 0)
        blank, token = energy[owner % 2 == 0], energy[owner % 2 == 1]
        assert token.mean() > blank.mean() + 4, (b, durations[b])  # e^4: ~55x the energy
        # the loud frames are the tokens' (near the log-mel floor the blanks')
        loud = energy > energy.max() - 4
        assert (owner[loud] % 2 == 1).float().mean() > 0.8, durations[b]


def test_source_weight_adds_the_learned_sources_spectral_loss(items):
    """source_weight adds exactly the source's STFT term; with the fixed sine source there is none."""
    totals = {}
    for weight in (1.0, 0.0):
        model = _model(items)
        cfg = tts.TTSTrainConfig(source_weight=weight, segment_frames=16)
        losses = tts.tts_losses(model, _batch(items, model), cfg, np.random.default_rng(0))
        totals[weight] = (float(losses["tts"].detach()), float(losses["source"].detach()))
        losses["loss"].backward()
        assert model.source.envelope.weight.grad.abs().sum() > 0  # the decoder's output still trains it
    assert totals[1.0][1] > 0
    assert totals[1.0][0] - totals[0.0][0] == pytest.approx(totals[1.0][1], rel=1e-4)
    sine = _model(items, source="sine")
    assert sine.source is None
    losses = tts.tts_losses(sine, _batch(items, sine), tts.TTSTrainConfig(segment_frames=16), np.random.default_rng(0))
    assert float(losses["source"]) == 0.0
