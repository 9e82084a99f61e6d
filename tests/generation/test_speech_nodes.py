"""End to end through the speech nodes on a small spoken table: train (MLflow run with WAV
samples), save / load through the catalog datasets, evaluate on held-out transcripts and
speakers, generate WAVs for prompts (table speakers and a cloned reference); the shipped
parameters validate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import fresh_tracking_store
from tests.speech_helpers import audio_table, llm, tokenizer
from xoron_pipelines.data.media import decode_audio, encode_audio
from xoron_pipelines.datasets.speech_model import AudioFilesDataset, SpeechModelDataset
from xoron_pipelines.evaluation.speech import derangement, word_error_rate
from xoron_pipelines.pipelines.generation.speech import SpeechParams, evaluate_speech, generate_speech, train_speech
from xoron_pipelines.validation import ParameterError, validate_group

PROJECT = Path(__file__).resolve().parents[2]

SMALL = {
    "device": "cpu",
    "model": dict(
        hidden_size=16,
        text_layers=1,
        frame_layers=1,
        audio_n_mels=16,
        n_fft=256,
        hop_length=64,
        upsample_rates=[8, 8],
        upsample_initial_channels=8,
        resblock_kernel_sizes=[3],
        resblock_dilations=[1],
        audio_num_speakers=8,
        audio_speaker_embed_dim=8,
        prompt_frames=8,
    ),  # fmt: skip
    "train": dict(steps=6, batch_size=4, segment_frames=16, progress=False, log_every=2),
    "evaluate": dict(max_items=6, samples_logged=1, recognizer=dict(hidden_size=16, steps=5, batch_size=4)),
    "tracking": dict(sample_every=4, samples=1),
}


def test_train_evaluate_generate(tmp_path):
    table = audio_table(10, 6, 2, 2, max_words=2)
    params = SpeechParams.model_validate(SMALL)
    with fresh_tracking_store(tmp_path) as client:
        model, summary = train_speech(llm(), tokenizer(), table, params)
        runs = {r.info.run_name: r for r in client.search_runs(["0"])}
        arts = [a.path for a in client.list_artifacts(runs["speech"].info.run_id, "samples")]
        assert arts == ["samples/step00004_0.wav", "samples/step00006_0.wav"]
        assert [m.step for m in client.get_metric_history(runs["speech"].info.run_id, "tts")] == [2, 4, 6]

        assert summary["clips"] == 10 and summary["speakers"] == 2 and summary["steps"] == 6
        SpeechModelDataset(str(tmp_path / "speech")).save(model)
        loaded = SpeechModelDataset(str(tmp_path / "speech")).load()
        assert loaded.config.speakers == ["train00", "train01"]

        report = evaluate_speech(loaded, llm(), tokenizer(), table, params)
        run = {r.info.run_name: r for r in client.search_runs(["0"])}["speech_evaluation"]
        logged = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert logged == {"samples/00_generated.wav", "samples/00_reference.wav", "samples/00_real.wav"}
        assert "eval/speech/wer/generated" in run.data.metrics
    assert report["n"] == 6 and report["heldout_speakers"] == 2 and report["heldout_speakers_seen_in_training"] == 0
    assert set(report["wer"]) == {"generated", "real_ceiling", "shuffled_baseline", "below_baseline"}
    assert all(0 <= report["wer"][k] for k in ("generated", "real_ceiling", "shuffled_baseline"))
    assert -1 <= report["speaker"]["cosine_to_reference"] <= 1
    json.dumps(report)

    reference = tmp_path / "ref.wav"
    reference.write_bytes(table[table["split"] == "heldout"]["media"].iloc[0])
    prompts = ["red circle", {"text": "stop", "speaker": "train01"}, {"text": "go left", "reference": str(reference)}]
    wavs = generate_speech(loaded, llm(), tokenizer(), prompts, params)
    assert list(wavs) == ["000_red_circle.wav", "001_stop.wav", "002_go_left.wav"]
    for data in wavs.values():
        wave, sr = decode_audio(data)
        assert sr == 16000 and wave.size > 0 and wave.size % 64 == 0
    AudioFilesDataset(str(tmp_path / "out")).save(wavs)
    assert AudioFilesDataset(str(tmp_path / "out")).load() == wavs
    with pytest.raises(ValueError, match="speaker 'nobody' is not in the model's table"):
        generate_speech(loaded, llm(), tokenizer(), [{"text": "go", "speaker": "nobody"}], params)


def test_shipped_parameters_validate_and_unknown_keys_are_named():
    values = yaml.safe_load((PROJECT / "conf/base/parameters_speech_generation.yml").read_text())["speech_generation"]
    params = validate_group("speech_generation", values)
    assert params.train.tts_loss_weight == 0.1 and params.model.use_mas and params.model.use_in_context_audio_prompting
    assert params.prompts
    bad = {**values, "model": {**values["model"], "use_mass": True}}
    with pytest.raises(ParameterError, match="speech_generation.model.use_mass"):
        validate_group("speech_generation", bad)
    with pytest.raises(ParameterError, match="product of upsample_rates"):
        validate_group("speech_generation", {**values, "model": {**values["model"], "hop_length": 128}})


def test_word_error_rate_and_derangement():
    assert word_error_rate(["red circle two", "go"], ["red square two", "go go"]) == pytest.approx(2 / 4)
    assert word_error_rate(["a b"], [""]) == 1.0
    perm = derangement(7, np.random.default_rng(0), ["x", "x", "y", "y", "z", "z", "w"])
    assert sorted(perm) == list(range(7)) and all(p != i for i, p in enumerate(perm))
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def test_cloned_voice_needs_a_readable_reference(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope")
    params = SpeechParams.model_validate(SMALL)
    from xoron_pipelines.model.speech import SpeechConfig, SpeechModel

    cfg = SpeechConfig(**params.model.model_dump(), llm_hidden_size=32, speakers=["a"])
    with pytest.raises(Exception, match="undecodable audio"):
        generate_speech(SpeechModel(cfg), llm(), tokenizer(), [{"text": "go", "reference": str(bad)}], params)
    assert encode_audio  # the codec the nodes write with


def test_recognizer_learns_real_speech_and_any_step_count_runs():
    """The evaluation's recogniser is model/audio.py's audio encoder (log-mel front end) with its
    CTC head and greedy decoding; trained on real clips only, it transcribes held-out speakers far
    better than chance; a tiny step count (warm-up of one step) still runs."""
    from xoron_pipelines.evaluation.speech import RecognizerConfig, train_recognizer
    from xoron_pipelines.model.audio import AudioEncoder, greedy_decode
    from xoron_pipelines.training.tts import decode_rows

    table = audio_table(160, 20, 8, 2, max_words=2)
    train = decode_rows(table[table["split"] == "train"], 16000)
    held = decode_rows(table[table["split"] == "heldout"], 16000)
    asr = train_recognizer([c[1] for c in train], [c[2] for c in train], RecognizerConfig())
    hyps = asr.transcribe([c[1] for c in held])
    wer = word_error_rate([c[2] for c in held], hyps)
    assert wer < 0.5, wer
    assert isinstance(asr.encoder, AudioEncoder) and not asr.encoder.config.use_raw_waveform
    wave = torch.from_numpy(held[0][1])[None]
    with torch.no_grad():
        out = asr.encoder(wave, torch.tensor([wave.shape[1]]))
    assert hyps[0] == greedy_decode(out.extras["ctc_logits"], out.extras["frame_lengths"])[0]
    train_recognizer([c[1] for c in train[:4]], [c[2] for c in train[:4]], RecognizerConfig(steps=10, hidden_size=16))
