"""The speech generator's parts: monotonic alignment search against a brute force, uniform
durations, expansion, the anti-aliased Snake, the waveform decoder's shapes, speaker routes,
in-context prompting, safetensors round trip; the pitch track, the harmonic excitation, the learned
harmonic-plus-noise source and the generated pitch following the pitch head."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from xoron_pipelines.model.speech import (
    F0_MAX,
    F0_MIN,
    AntiAliasedSnake,
    HarmonicNoiseSource,
    SpeechConfig,
    SpeechModel,
    excitation,
    expand,
    frame_pitch,
    harmonic_noise,
    monotonic_alignment_search,
    pitch_summary,
    slot_progress,
    sub_slot_weights,
    uniform_durations,
)


def _brute_force(log_p: np.ndarray) -> tuple[float, np.ndarray]:
    """Best monotonic surjective alignment by enumerating every duration vector."""
    slots, frames = log_p.shape
    best = (-np.inf, None)
    for cuts in itertools.combinations(range(1, frames), slots - 1):
        bounds = (0, *cuts, frames)
        score = sum(log_p[i, bounds[i] : bounds[i + 1]].sum() for i in range(slots))
        if score > best[0]:
            best = (score, np.diff(bounds))
    return best


@pytest.mark.parametrize("slots,frames", [(1, 1), (1, 4), (2, 2), (2, 5), (3, 6), (4, 7), (5, 9), (3, 10)])
def test_mas_matches_brute_force(slots, frames):
    rng = np.random.default_rng(slots * 100 + frames)
    for _ in range(5):
        log_p = rng.normal(size=(slots, frames))
        path = monotonic_alignment_search(log_p)
        score, durations = _brute_force(log_p)
        np.testing.assert_array_equal(path.sum(1), durations)
        assert (path * log_p).sum() == pytest.approx(score)
        # a path: one slot per frame, slots never decrease and never skip
        assert (path.sum(0) == 1).all()
        owner = path.argmax(0)
        assert owner[0] == 0 and owner[-1] == slots - 1 and set(np.diff(owner)) <= {0, 1}


def test_mas_recovers_planted_alignment():
    """Frames drawn around per-slot means in known runs: MAS finds the runs."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(6, 8)) * 3
    durations = np.array([3, 1, 5, 2, 4, 6])
    frames = np.repeat(means, durations, axis=0) + 0.1 * rng.normal(size=(durations.sum(), 8))
    log_p = -0.5 * ((means[:, None] - frames[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(monotonic_alignment_search(log_p).sum(1), durations)


def test_mas_refuses_fewer_frames_than_slots():
    with pytest.raises(ValueError, match="2 frames, 3 slots"):
        monotonic_alignment_search(np.zeros((3, 2)))


def test_uniform_durations_and_expand():
    np.testing.assert_array_equal(uniform_durations(3, 8), [3, 3, 2])
    x = torch.arange(6.0).view(1, 3, 2)
    out = expand(x, torch.tensor([[2, 0, 1]]), 4)
    assert out[0].tolist() == [[0, 1], [0, 1], [4, 5], [0, 0]]
    prog = slot_progress(torch.tensor([[2, 1]]), 4, bands=1)
    # progress 0.25, 0.75 in the first slot, 0.5 in the second; nothing past the frames
    assert torch.allclose(prog[0, :3, 0], torch.sin(torch.pi * torch.tensor([0.25, 0.75, 0.5])))
    assert prog[0, 3].abs().sum() == 0


def test_sub_slot_states_are_stretched_over_their_slot():
    """K states per slot spread evenly over its frames whatever its duration: weights sum to 1,
    the first frame is on state 0, the last on state K-1, the states advance in order, and a
    slot K frames long gives each frame its own state."""
    w = sub_slot_weights(torch.tensor([[4, 12, 1]]), 18, 4)
    assert w.shape == (1, 18, 4)
    torch.testing.assert_close(w[0, :17].sum(-1), torch.ones(17))
    assert w[0, 17].abs().sum() == 0  # past the item's frames
    assert torch.equal(w[0, :4], torch.eye(4))  # 4 frames, 4 states
    long = w[0, 4:16]
    centre = (long * torch.arange(4.0)).sum(-1)  # the state position of each frame
    assert centre[0] == 0 and centre[-1] == 3 and (centre.diff() >= 0).all()
    assert torch.equal(w[0, 16], torch.tensor([0.0, 0.5, 0.5, 0.0]))  # a 1-frame slot: its middle


def test_sub_slots_knob_feeds_the_frames():
    """sub_slots > 0: the slot states reach the frames (zeroing their layer changes the output);
    0: no such layer, frames still built."""
    slots, dur, fmask = torch.randn(1, 3, 16), torch.tensor([[2, 5, 1]]), torch.ones(1, 8, dtype=torch.bool)
    model = _model(sub_slots=4)
    with torch.no_grad():
        a = model.frames(slots, dur, 8, fmask, None, None)
        model.sub_slots.weight.zero_()
        model.sub_slots.bias.zero_()
        b = model.frames(slots, dur, 8, fmask, None, None)
    assert not torch.allclose(a, b)
    off = _model(sub_slots=0)
    assert off.sub_slots is None and off.frames(slots, dur, 8, fmask, None, None).shape == a.shape


def test_anti_aliased_snake_keeps_length_and_passes_low_frequencies():
    act = AntiAliasedSnake(1)
    with torch.no_grad():
        act.act.log_alpha.fill_(-20.0)  # alpha ~ 0: Snake ~ identity + alpha x^2 ~ identity
    t = torch.arange(512.0)
    low = torch.sin(2 * torch.pi * t / 64)[None, None]
    out = act(low)
    assert out.shape == low.shape
    assert torch.allclose(out[..., 32:-32], low[..., 32:-32], atol=2e-2)


def _model(**kw) -> SpeechModel:
    cfg = SpeechConfig(
        llm_hidden_size=8, hidden_size=16, audio_n_mels=16, n_fft=256, hop_length=32, upsample_rates=[4, 8],
        upsample_initial_channels=8, resblock_kernel_sizes=[3], audio_num_speakers=3, audio_speaker_embed_dim=8,
        speakers=["a", "b"], **kw,
    )  # fmt: skip
    torch.manual_seed(0)
    return SpeechModel(cfg).eval()


def _text(bsz=2, length=3):
    torch.manual_seed(1)
    mask = torch.ones(bsz, length, dtype=torch.bool)
    mask[1, -1] = False
    return torch.randn(bsz, length, 8), torch.randn(bsz, length, 8), mask


def test_generate_shapes_and_lengths_from_table_and_reference():
    model = _model()
    hidden, embeds, mask = _text()
    wave, lengths = model.generate(hidden, embeds, mask, speaker_ids=torch.tensor([0, 1]))
    assert wave.shape == (2, int(lengths.max())) and (lengths % 32 == 0).all() and wave.abs().max() <= 1
    ref = torch.randn(2, 32 * 20) * 0.1
    wave2, _ = model.generate(hidden, embeds, mask, ref_wave=ref, ref_lengths=torch.tensor([640, 320]))
    assert not torch.allclose(wave2[:, :64], wave[:, :64])


def test_in_context_prompt_is_attended_only_when_enabled():
    """With prompting on, changing the reference's frames changes the output even with the
    speaker vector fixed; with it off, the prompt is not used."""
    for enabled in (True, False):
        model = _model(use_in_context_audio_prompting=enabled)
        slots = torch.randn(1, 3, 16)
        dur = torch.tensor([[2, 3, 1]])
        fmask = torch.ones(1, 6, dtype=torch.bool)
        rmask = torch.ones(1, 5, dtype=torch.bool)
        a = model.frames(slots, dur, 6, fmask, torch.randn(1, 16, 5), rmask)
        b = model.frames(slots, dur, 6, fmask, torch.randn(1, 16, 5), rmask)
        assert (not torch.allclose(a, b)) == enabled


def test_speaker_vector_routes():
    model = _model()
    ids = torch.tensor([0, 1])
    mel = torch.randn(2, 16, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    table = model.speaker_vector(ids)
    enc = model.speaker_vector(None, mel, mask)
    mixed = model.speaker_vector(ids, mel, mask, use_table=torch.tensor([True, False]))
    assert torch.equal(mixed[0], table[0]) and torch.equal(mixed[1], enc[1])
    with pytest.raises(ValueError, match="table id or a reference"):
        model.speaker_vector(None)


def test_save_and_load_round_trip(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").is_file()
    loaded = SpeechModel.from_pretrained(tmp_path)
    assert loaded.config == model.config
    hidden, embeds, mask = _text()
    a, _ = model.generate(hidden, embeds, mask, speaker_ids=torch.tensor([0, 1]))
    b, _ = loaded.generate(hidden, embeds, mask, speaker_ids=torch.tensor([0, 1]))
    assert torch.equal(a, b)


def test_config_errors_name_the_knob():
    with pytest.raises(ValueError, match="product of upsample_rates"):
        SpeechConfig(hop_length=200)
    with pytest.raises(ValueError, match="exceed audio_num_speakers"):
        SpeechConfig(audio_num_speakers=1, speakers=["a", "b"])


def _peak_hz(x: np.ndarray, sr: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / sr)[spec.argmax()])


def test_excitation_follows_the_frame_f0():
    """The source signal's spectrum peaks at each frame's f0 (the fundamental, harmonics at k f0
    weaker); unvoiced frames are noise without a harmonic peak."""
    hop, sr = 256, 16000
    f0 = torch.tensor([[110.0] * 40 + [230.0] * 40 + [0.0] * 40])
    src = excitation(f0, f0 > 0, hop, sr, generator=torch.Generator().manual_seed(0))[0].numpy()
    assert src.shape == (120 * hop,)
    low, high, unvoiced = src[4 * hop : 36 * hop], src[44 * hop : 76 * hop], src[84 * hop : 116 * hop]
    res = sr / low.size  # FFT bin width
    assert abs(_peak_hz(low) - 110) <= res and abs(_peak_hz(high) - 230) <= res
    spec = np.abs(np.fft.rfft(unvoiced))
    assert spec.max() < 8 * np.median(spec)  # flat: no harmonic line
    same = excitation(f0, f0 > 0, hop, sr, generator=torch.Generator().manual_seed(0))[0].numpy()
    assert np.array_equal(src, same)


def test_frame_pitch_reads_the_speakers_f0():
    """Per-frame f0 of synthetic speech: the speaker's pitch (within 3%: whole-sample lags) on
    at least 90% of the voiced frames (an isolated octave slip is allowed), unvoiced on the
    leading silence."""
    from xoron_pipelines.synth.media.speech import Speaker, speak

    for pitch in (95.0, 210.0):
        wave, _ = speak("yellow one", Speaker("s", pitch, 1.0, 1.0, 0.0))
        f0, voiced = frame_pitch(wave, 16000, 256)
        assert f0.shape == (wave.size // 256,) and not voiced[0]
        assert voiced.sum() >= 10 and np.mean(np.abs(f0[voiced] / pitch - 1) < 0.03) >= 0.9, f0[voiced]


def test_generated_pitch_is_the_predicted_pitch():
    """generate() renders the excitation at the pitch head's f0: forcing that head to a fixed
    f0 puts the output spectrum's peak at it (the learned source's fundamental), not at the
    frame rate."""
    model = _model()
    hidden, embeds, mask = _text()
    with torch.no_grad():
        model.pitch_out.weight.zero_()
        model.pitch_speaker.weight.zero_()
        unit = (math.log(180.0) - math.log(F0_MIN)) / (math.log(F0_MAX) - math.log(F0_MIN))
        model.pitch_out.bias.copy_(torch.tensor([math.log(unit / (1 - unit)), 10.0]))  # 180 Hz, voiced
        model.pitch_speaker.bias.zero_()
        model.duration[-1].weight.zero_()
        model.duration[-1].bias.fill_(math.log(40.0))  # 40 frames a slot: long enough for an FFT
        model.decoder.conv_post.weight.zero_()  # the source alone drives the output (through source_out)
        model.decoder.conv_post.bias.zero_()
        model.source.envelope.weight.zero_()  # an envelope falling with frequency, no noise
        model.source.envelope.bias.copy_(torch.linspace(-1.0, -12.0, model.config.source_bins))
        model.source.noise.bias.fill_(-30.0)
    wave, length = model.generate(hidden, embeds, mask, speaker_ids=torch.tensor([0, 1]))
    x = wave[0, : length[0]].numpy()
    x = x - x.mean()
    assert abs(_peak_hz(x) - 180.0) < 16000 / x.size * 2, _peak_hz(x)


def test_cloning_conditions_on_the_references_pitch():
    """A reference clip's measured pitch enters the speaker embedding: its f0 track (from the
    waveform) is the speaker's, and the embedding moves by exactly the pitch map of its summary."""
    from xoron_pipelines.synth.media.speech import Speaker, speak

    model = _model()
    for pitch in (95.0, 210.0):
        wave, _ = speak("green one", Speaker("s", pitch, 1.0, 1.0, 0.0))
        ref = torch.from_numpy(wave)[None]
        lengths = torch.tensor([wave.size // 32 * 32])
        mel, mask = model.mel_and_mask(ref, lengths)
        f0 = model.pitch_track(ref, lengths)
        summary = pitch_summary(f0, mask)
        assert abs(math.exp(summary[0, 0].item() * 0.5 + math.log(150.0)) / pitch - 1) < 0.03
        with torch.no_grad():
            moved = model.speaker_vector(None, mel, mask, ref_f0=f0) - model.speaker_vector(None, mel, mask)
            torch.testing.assert_close(moved, model.speaker_encoder.pitch_in(summary))


def test_harmonic_noise_peaks_at_k_f0_with_the_given_amplitudes():
    """Harmonics: spectral lines exactly at k * f0 with the amplitudes asked for (a sine of
    amplitude a over N samples gives an FFT peak of a * N / 2), nothing at the harmonics given
    zero amplitude, none above Nyquist; unvoiced frames carry no harmonics."""
    hop, sr, frames = 256, 16000, 40
    f0 = torch.full((1, frames), 125.0)  # 125 Hz: a whole number of periods per FFT bin
    amps = torch.zeros(1, frames, 80)
    amps[..., 0], amps[..., 2], amps[..., 9] = 0.4, 0.2, 0.1  # k = 1, 3, 10
    amps[..., 70] = 0.3  # 8875 Hz: above Nyquist, dropped
    silent = torch.zeros(1, frames, 4)
    g = torch.Generator().manual_seed(0)
    x = harmonic_noise(f0, f0 > 0, amps, silent, hop, sr, g)[0].numpy()
    assert x.shape == (frames * hop,)
    core = x[4 * hop : 36 * hop]  # away from the interpolation's edges
    spec = np.abs(np.fft.rfft(core)) / (core.size / 2)
    freqs = np.fft.rfftfreq(core.size, 1 / sr)
    at = lambda hz: spec[np.argmin(np.abs(freqs - hz))]  # noqa: E731
    for k, a in ((1, 0.4), (3, 0.2), (10, 0.1)):
        assert at(125 * k) == pytest.approx(a, rel=0.02)
    assert at(250) < 1e-3 and at(500) < 1e-3 and spec.max() == pytest.approx(0.4, rel=0.02)
    unvoiced = harmonic_noise(f0, torch.zeros_like(f0, dtype=torch.bool), amps, silent, hop, sr, g)
    assert unvoiced.abs().max() < 1e-6


def test_harmonic_noise_noise_follows_its_band_magnitudes():
    """Filtered noise: the power in each band is the square of its magnitude (unit white noise
    at magnitude 1), loud bands loud and silent bands silent."""
    hop, sr, frames = 256, 16000, 200
    f0 = torch.zeros(1, frames)
    mags = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]).repeat(1, frames, 1)  # 2-4 kHz loud, 1k edges
    x = harmonic_noise(f0, f0 > 0, torch.zeros(1, frames, 4), mags, hop, sr, torch.Generator().manual_seed(0))
    spec = np.abs(np.fft.rfft(x[0].numpy())) ** 2 / x.shape[1]  # white unit noise: 1 per bin
    freqs = np.fft.rfftfreq(x.shape[1], 1 / sr)
    assert spec[(freqs > 2200) & (freqs < 3800)].mean() == pytest.approx(1.0, rel=0.15)
    assert spec[freqs < 800].mean() < 0.01 and spec[freqs > 5200].mean() < 0.01


def test_learned_source_reads_one_envelope_at_every_pitch():
    """The harmonic amplitudes are the envelope read at k * f0: a peak of the envelope (a
    formant) stays at its frequency whatever the pitch; the harmonic nearest to it is loudest."""
    cfg = SpeechConfig(llm_hidden_size=8, speakers=["a"], hidden_size=16, num_heads=2, audio_n_mels=16)
    source = HarmonicNoiseSource(20, cfg)  # 4 state channels + the 16 log-mel channels
    with torch.no_grad():
        source.envelope.weight.zero_()
        centres = 700.0 * (10 ** (np.linspace(0, source.mel_max, cfg.source_bins) / 2595.0) - 1)
        source.envelope.bias.copy_(torch.tensor(-(((centres - 1000.0) / 300.0) ** 2), dtype=torch.float32))
    for pitch in (100.0, 125.0, 200.0):
        amps = source.harmonic_amplitudes(torch.zeros(1, 1, 20), torch.tensor([[pitch]]))[0, 0]
        assert (int(amps.argmax()) + 1) * pitch == pytest.approx(1000.0, abs=pitch / 2)
        assert float(amps.max()) > 0.9 and float(amps[-1]) < 1e-6


def test_learned_source_starts_as_a_reading_of_the_log_mel():
    """Untrained, the envelope is the predicted log-mel read at each harmonic's frequency (plus
    one offset): raising the log-mel by 1 in the bands around 1 kHz multiplies the harmonics
    near 1 kHz by e and leaves the far ones alone; the noise bands follow the same way."""
    cfg = SpeechConfig(llm_hidden_size=8, speakers=["a"], hidden_size=16, num_heads=2, audio_n_mels=40)
    source = HarmonicNoiseSource(16 + 40, cfg)
    centres = 700.0 * (10 ** (np.linspace(0, source.mel_max, 42)[1:-1] / 2595.0) - 1)
    h = torch.full((1, 1, 56), -5.0)
    h[..., :16] = 0.0
    raised = h.clone()
    raised[..., 16:][..., np.abs(centres - 1000) < 400] += 1.0
    f0 = torch.tensor([[100.0]])
    with torch.no_grad():
        ratio = (source.harmonic_amplitudes(raised, f0) / source.harmonic_amplitudes(h, f0))[0, 0]
        noise_ratio = (source.noise(raised).exp() / source.noise(h).exp())[0, 0]
    assert float(ratio[9]) == pytest.approx(math.e, rel=1e-3)  # 1 kHz
    assert float(ratio[1]) == pytest.approx(1.0, abs=1e-3) and float(ratio[39]) == pytest.approx(1.0, abs=1e-3)
    band_hz = np.linspace(0, 8000, cfg.source_bins)
    assert float(noise_ratio[np.argmin(np.abs(band_hz - 1000))]) == pytest.approx(math.e, rel=1e-2)
    assert float(noise_ratio[-1]) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("harmonics", [3, 10])
def test_source_harmonics_sets_the_harmonics_the_learned_source_renders(harmonics):
    """``source_harmonics`` = K: the learned source reads its envelope at k * f0 for k = 1..K only,
    so its waveform has lines at 125, ..., K * 125 Hz and nothing at (K + 1) * 125 Hz."""
    model = _model(source_harmonics=harmonics)
    source = model.source
    sr, hop, frames = model.config.sample_rate, model.config.hop_length, 400
    h = torch.zeros(1, source.envelope.in_features, frames)
    with torch.no_grad():
        source.envelope.bias.fill_(math.log(0.1))  # a flat envelope: every harmonic at 0.1
        source.noise.bias.fill_(-30.0)  # no noise
    f0 = torch.full((1, frames), 125.0)
    amps = source.harmonic_amplitudes(h.transpose(1, 2), f0)
    assert amps.shape == (1, frames, harmonics)
    x = source(h, f0, torch.ones(1, frames, dtype=torch.bool), torch.Generator().manual_seed(0))[0].detach().numpy()
    core = x[40 * hop : 360 * hop]
    spec = np.abs(np.fft.rfft(core)) / (core.size / 2)
    freqs = np.fft.rfftfreq(core.size, 1 / sr)
    at = lambda hz: spec[np.argmin(np.abs(freqs - hz))]  # noqa: E731
    assert all(at(125 * k) == pytest.approx(0.1, rel=0.05) for k in range(1, harmonics + 1))
    assert at(125 * (harmonics + 1)) < 1e-3
