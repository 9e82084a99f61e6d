"""Audio encoder (raw / log-mel front ends, Conformer with RMLA) and the CTC ASR head."""

import itertools

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from xoron_pipelines.model.audio import (
    ASR_ALPHABET,
    AudioEncoderConfig,
    LogMelFrontEnd,
    RawWaveformTokenizer,
    build_audio_encoder,
    ctc_loss,
    encode_transcript,
    greedy_decode,
    normalize_transcript,
    word_error_rate,
    word_errors,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SMALL = {"hidden_size": 32, "num_heads": 2, "audio_kv_lora_rank": 8, "feature_channels": 16}


def _encoder(**knobs):
    torch.manual_seed(0)
    return build_audio_encoder(AudioEncoderConfig(**{**SMALL, **knobs})).eval()


def _tones(n: int, seed: int, sr: int = 16000) -> torch.Tensor:
    """A few tones plus a little noise, amplitude < 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    wave = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(100, 4000, 3))
    return torch.tensor(wave + 0.01 * rng.standard_normal(n), dtype=torch.float32)


@pytest.mark.parametrize("raw", [True, False])
def test_shapes_and_one_frame_per_20_ms(raw):
    enc = _encoder(use_raw_waveform=raw)
    lengths = torch.tensor([320, 639, 640, 4321, 16000])
    x = torch.stack([torch.nn.functional.pad(_tones(int(n), i), (0, 16000 - int(n))) for i, n in enumerate(lengths)])
    with torch.no_grad():
        out = enc(x, lengths)
    expected = torch.tensor([1, 1, 2, 13, 50])
    assert torch.equal(out.extras["frame_lengths"], expected)
    assert out.features.shape == (5, 50, 32) and enc.hidden_size == 32
    assert torch.equal(out.mask, torch.arange(50) < expected[:, None])
    assert out.extras["ctc_logits"].shape == (5, 50, len(ASR_ALPHABET)) == (5, 50, 29)
    assert not out.features[~out.mask].any()  # padding frames are zero
    # the sample-rate knob: at 32 kHz one second is still 50 frames (hop = 640 samples)
    enc32 = _encoder(use_raw_waveform=raw, audio_sample_rate=32000)
    with torch.no_grad():
        out32 = enc32(_tones(32000, 0, sr=32000)[None], torch.tensor([32000]))
    assert out32.features.shape == (1, 50, 32)


@pytest.mark.parametrize("raw", [True, False])
def test_padding_does_not_change_the_valid_frames(raw):
    enc = _encoder(use_raw_waveform=raw)
    # lengths just past a frame boundary: the last frame's window (and the last mel frames) reach
    # past the clip, where the batch holds junk and the single clip holds nothing
    a, b = _tones(7050, 1), _tones(4170, 2)
    x = torch.full((2, 7300), 0.7)
    x[0, :7050], x[1, :4170] = a, b
    with torch.no_grad():
        both = enc(x, torch.tensor([7050, 4170]))
        alone = [enc(a[None]), enc(b[None])]
    for i, single in enumerate(alone):
        n = single.features.shape[1]
        assert int(both.mask[i].sum()) == n == (22, 13)[i]
        torch.testing.assert_close(both.features[i, :n], single.features[0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(
            both.extras["ctc_logits"][i, :n], single.extras["ctc_logits"][0], atol=2e-5, rtol=1e-4
        )


def test_kv_lora_rank_sets_the_latent_kv_shapes():
    for rank in (4, 8, 24):
        enc = _encoder(audio_kv_lora_rank=rank)
        attn = enc.blocks[0].attn
        # hidden 32 / 2 heads: 16 content + 8 rotary dims for q and k, 16 value dims per head
        assert attn.kv_a_proj_with_mqa.weight.shape == (rank + 8, 32)
        assert attn.kv_a_layernorm.weight.shape == (rank,)
        assert attn.kv_b_proj.weight.shape == (2 * (16 + 16), rank)
        with torch.no_grad():
            assert enc(_tones(1600, 0)[None]).features.shape == (1, 5, 32)


def test_raw_tokenizer_frame_sees_25_ms_centred_on_its_20_ms():
    """Frame f of the raw tokenizer depends on samples [320 f - 40, 320 f + 360) and no others."""
    front = _encoder().front_end
    wave = _tones(3200, 5)[None]
    with torch.no_grad():
        base = front.tokenize(wave)[0]
        assert base.shape == (10, 32)
        for pos, changed in [(999, {2, 3}), (1000, {3}), (1239, {3}), (1240, {3, 4}), (1319, {3, 4}), (1320, {4})]:
            poked = wave.clone()
            poked[0, pos] += 0.5
            diff = (front.tokenize(poked)[0] - base).abs().amax(-1)
            assert {int(f) for f in torch.nonzero(diff)} == changed, pos


def test_rmla_positions_are_relative(monkeypatch):
    """Shifting every frame index leaves the attention output unchanged; moving one frame changes it."""
    from xoron_pipelines.model import audio

    attn = _encoder().blocks[0].attn
    x, valid = torch.randn(1, 9, 32), torch.ones(1, 9, dtype=torch.bool)
    with torch.no_grad():
        base = attn(x, valid)
        monkeypatch.setattr(audio, "grid_coords", lambda n, device=None: torch.arange(n)[:, None] + 37)
        torch.testing.assert_close(attn(x, valid), base, atol=1e-5, rtol=1e-4)
        monkeypatch.setattr(audio, "grid_coords", lambda n, device=None: torch.arange(n)[:, None] * 2)
        assert not torch.allclose(attn(x, valid), base, atol=1e-3)


def test_front_end_knob_switches_raw_and_log_mel():
    raw, mel = _encoder(use_raw_waveform=True), _encoder(use_raw_waveform=False, audio_n_mels=40)
    assert isinstance(raw.front_end, RawWaveformTokenizer) and isinstance(mel.front_end, LogMelFrontEnd)
    assert not any("mel" in n or "conv1" in n for n, _ in raw.named_parameters())
    assert mel.front_end.conv1.in_channels == 40
    x = _tones(3200, 3)[None]
    assert mel.front_end.log_mel(x, torch.tensor([3200])).shape == (1, 40, 20)  # 10 ms mel frames
    with torch.no_grad():
        assert raw(x).features.shape == mel(x).features.shape == (1, 10, 32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_whisper_feature_extractor(n_mels):
    from transformers import WhisperFeatureExtractor

    wave = _tones(11_200, 4)
    wave[4000:6000] = 0.0  # silence: its frames sit on the floor 8 below the clip's loudest (log10) bin
    front = _encoder(use_raw_waveform=False, audio_n_mels=n_mels).front_end
    ours = front.log_mel(wave[None], torch.tensor([11_200]))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # features stay float32 under mixed precision
        assert torch.equal(front.log_mel(wave[None], torch.tensor([11_200])), ours)
    ref = WhisperFeatureExtractor(feature_size=n_mels)(wave.numpy(), sampling_rate=16000, return_tensors="np")
    assert ours.shape == (1, n_mels, 70)
    np.testing.assert_allclose(ours[0].numpy(), ref["input_features"][0][:, :70], atol=1e-4, rtol=1e-4)


def test_structural_knobs_take_effect():
    base = _encoder()
    assert len(_encoder(num_layers=3).blocks) == 3 and len(base.blocks) == 2
    assert _encoder(hidden_size=48).ctc_head.in_features == 48
    assert _encoder(num_heads=4).blocks[0].attn.q_proj.weight.shape == (4 * (8 + 4), 32)
    assert base.blocks[0].attn.q_proj.weight.shape == (2 * (16 + 8), 32)
    assert _encoder(conv_kernel_size=7).blocks[0].depthwise.weight.shape == (32, 1, 7)
    assert _encoder(feature_channels=24).front_end.convs[3].weight.shape == (24, 24, 3)
    defaults = AudioEncoderConfig()
    assert (defaults.audio_sample_rate, defaults.audio_n_mels, defaults.audio_max_length) == (16000, 80, 1000)
    assert defaults.use_raw_waveform and defaults.hop == 320


@pytest.mark.parametrize(
    ("knobs", "named"),
    [
        ({"audio_sample_rate": 22050}, "audio_sample_rate"),
        ({"hidden_size": 30}, "num_heads"),
        ({"conv_kernel_size": 8}, "conv_kernel_size"),
        ({"audio_kv_lora_rank": 0}, "audio_kv_lora_rank"),
        ({"use_raw_waveform": 1}, "use_raw_waveform"),
        ({"audio_n_mel": 80}, "audio_n_mel"),
    ],
)
def test_bad_config_names_the_key(knobs, named):
    with pytest.raises(ValidationError, match=named):
        AudioEncoderConfig(**knobs)


def test_audio_max_length_is_a_frame_limit_and_longer_clips_are_errors():
    enc = _encoder(audio_max_length=10)
    with torch.no_grad():
        assert enc(_tones(3200 + 319, 0)[None]).features.shape[1] == 10  # 10 whole frames: allowed
        with pytest.raises(ValueError, match=r"clip 1 \(0.22 s\) gives 11 frames > audio_max_length=10 \(0.2 s"):
            enc(torch.stack([_tones(3520, 0), _tones(3520, 1)]), torch.tensor([3200, 3520]))
        with pytest.raises(ValueError, match=r"must lie in \[320, 400\]"):
            enc(torch.zeros(1, 400), torch.tensor([300]))


def test_transcripts_normalise_and_refuse_unknown_characters():
    assert normalize_transcript("  Don't STOP,\tnow! ") == "don't stop now"
    assert encode_transcript("ab c'") == [1, 2, 27, 3, 28]
    assert ASR_ALPHABET[0] == "<blank>" and len(ASR_ALPHABET) == 29
    with pytest.raises(ValueError, match="character '4'"):
        encode_transcript("route 42")


def _onehot_logits(paths):
    return torch.stack([torch.nn.functional.one_hot(torch.tensor(p), len(ASR_ALPHABET)).float() for p in paths])


def test_greedy_decode_merges_repeats_and_drops_blanks():
    c = {ch: i for i, ch in enumerate(ASR_ALPHABET)}
    book = [0, c["b"], c["o"], c["o"], 0, c["o"], c["k"], c["k"], 0, c["s"]]  # 's' is past the length
    hi = [c["h"], c["h"], c["i"], c[" "], c[" "], 0, c["y"], c["o"], 0, 0]
    assert greedy_decode(_onehot_logits([book, hi]), torch.tensor([9, 10])) == ["book", "hi yo"]


def test_ctc_loss_is_torchs_and_refuses_impossible_transcripts():
    from xoron_pipelines.model.audio import EncoderOutput

    torch.manual_seed(0)
    logits = torch.randn(2, 6, len(ASR_ALPHABET))
    frames = torch.tensor([6, 3])
    out = EncoderOutput(torch.zeros(2, 6, 4), None, {"ctc_logits": logits, "frame_lengths": frames})
    ref = torch.nn.functional.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1), torch.tensor([8, 9, 8]), frames, torch.tensor([2, 1])
    )
    torch.testing.assert_close(ctc_loss(out, ["Hi!", "h"]), ref)
    assert ctc_loss(out, ["hhh", "aa"]).isfinite()  # 'hhh' needs 5 frames, 'aa' 3
    with pytest.raises(ValueError, match="clip 1: transcript 'aaa' needs 5 CTC frames, the clip has 3"):
        ctc_loss(out, ["hi", "aaa"])
    with pytest.raises(ValueError, match="clip 0: transcript '...' has no characters"):
        ctc_loss(out, ["...", "a"])


def test_word_error_rate_hand_cases():
    assert word_errors("the cat sat", "the cat sat") == 0
    assert word_errors("the cat sat", "the bat sat") == 1  # substitution
    assert word_errors("the cat sat", "the sat") == 1  # deletion
    assert word_errors("the cat sat", "the cat sat down") == 1  # insertion
    assert word_errors("the cat sat", "cat sat the") == 2
    assert word_errors("a b", "") == 2 and word_errors("", "a b") == 2
    assert word_error_rate(["a b", "c d e f"], ["a", "c x e f g"]) == 3 / 6
    assert word_error_rate(["one"], ["two three"]) == 2.0
    with pytest.raises(ValueError, match="no words"):
        word_error_rate([""], ["a"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


WORDS = ("hi", "go", "up", "yes")


def _say(words, rng, sr=16000):
    """Each letter an 80 ms tone of its own pitch, 100 ms of silence after each word."""
    letters = sorted(set("".join(WORDS)))
    parts = [np.zeros(int(0.06 * sr))]
    for word in words:
        for ch in word:
            t = np.arange(int(0.08 * sr)) / sr
            parts.append(0.5 * np.sin(2 * np.pi * 300.0 * 1.3 ** letters.index(ch) * t + rng.uniform(0, 6)))
        parts.append(np.zeros(int(0.1 * sr)))
    return torch.tensor(np.concatenate(parts), dtype=torch.float32)


@pytest.mark.parametrize("raw", [True, False])
def test_encoder_and_ctc_head_learn_to_transcribe_synthetic_words(raw):
    rng = np.random.default_rng(0)
    utterances = [(w,) for w in WORDS] + list(itertools.permutations(WORDS, 2))
    texts = [" ".join(u) for u in utterances]
    waves = [_say(u, rng) for u in utterances]
    lengths = torch.tensor([len(w) for w in waves])
    x = torch.stack([torch.nn.functional.pad(w, (0, int(lengths.max()) - len(w))) for w in waves])
    torch.manual_seed(0)
    enc = build_audio_encoder(AudioEncoderConfig(use_raw_waveform=raw))  # the CPU preset
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-3)
    for step in range(120):
        enc.train()
        loss = ctc_loss(enc(x, lengths), texts)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)
        opt.step()
        if step % 10 == 9:
            with torch.no_grad():
                out = enc.eval()(x, lengths)
            hyps = greedy_decode(out.extras["ctc_logits"], out.extras["frame_lengths"])
            if hyps == texts:
                break
    assert hyps == texts and word_error_rate(texts, hyps) == 0.0
