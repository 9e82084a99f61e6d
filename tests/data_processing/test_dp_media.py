"""Media sources (hf / Parquet / folder) and the media tables of data_processing: every item is
kept (normalised: PNG, NPY, 16 kHz mono WAV, measured sizes) or quarantined with its reason, and
the counts reconcile; text-only configurations get empty tables."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import PROJECT_ROOT
from xoron_pipelines.data import media
from xoron_pipelines.data import media_sources as ms
from xoron_pipelines.datasets.media_table import MediaTableDataset, empty_table
from xoron_pipelines.pipelines.data_processing import nodes
from xoron_pipelines.pipelines.data_processing.params import Params

RNG = np.random.default_rng(0)
PNG = media.encode_image(RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8))
TINY = media.encode_image(np.zeros((4, 4, 3), np.uint8))
VIDEO = media.encode_video(RNG.integers(0, 256, (3, 9, 11, 3), dtype=np.uint8))
TONE = (0.5 * np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440)).astype(np.float32)  # 1 s at 8 kHz


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 20, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _wav(wave: np.ndarray, sr: int, channels: int = 1) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.stack([wave] * channels, axis=1) if channels > 1 else wave, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _base(**overrides) -> dict:
    conf = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_data_processing.yml").read_text())["data_processing"]
    conf["progress"] = False
    for key, value in overrides.items():
        conf[key] = value
    return conf


def _with_sources(*media_entries, **overrides) -> dict:
    conf = _base(**overrides)
    conf["sources"] = conf["sources"] + list(media_entries)  # the default text sources + the media sources
    return conf


def _reasons(report) -> dict[str, int]:
    return report["quarantined"]["reason"].value_counts().to_dict()


def _reconciles(table: pd.DataFrame, report) -> None:
    counts = report["counts"]
    assert counts.loc[counts.status == "kept", "count"].sum() == len(table)
    assert counts.loc[counts.status == "quarantined", "count"].sum() == len(report["quarantined"])
    per_reason = counts[counts.status == "quarantined"].groupby("reason")["count"].sum().to_dict()
    assert per_reason == _reasons(report)


def _hf_dataset(path, columns: dict[str, list], media_features: dict[str, str]) -> str:
    """A local datasets dataset (save_to_disk) with Image() / Audio() columns, built from bytes."""
    import datasets

    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    feats = {k: (struct if k in media_features else datasets.Value("string")) for k in columns}
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(feats))
    for col, kind in media_features.items():
        ds = ds.cast_column(col, datasets.Image() if kind == "image" else datasets.Audio())
    ds.save_to_disk(str(path))
    return str(path)


def test_hf_image_and_audio_columns(tmp_path):
    cell = lambda b: {"bytes": b, "path": None}  # noqa: E731
    images = _hf_dataset(
        tmp_path / "img",
        {
            "picture": [cell(PNG), cell(_jpeg()), cell(b"not an image"), cell(PNG), cell(TINY)],
            "text": ["a photo", "a jpeg", "broken", "", "tiny"],
        },
        {"picture": "image"},
    )
    audio = _hf_dataset(
        tmp_path / "aud",
        {
            "speech": [
                cell(_wav(TONE, 8000)),
                cell(_wav(TONE, 16000, channels=2)),
                cell(b"RIFF...."),
                cell(_wav(TONE, 8000)),
            ],
            "sentence": ["red circle", "stereo", "junk", "long"],
        },
        {"speech": "audio"},
    )
    params = _with_sources(
        {"name": "pics", "modality": "image", "hf": images},  # the Image column and "text" captions are found
        {"name": "talk", "modality": "audio", "hf": audio, "heldout": True},
        media={"max_audio_seconds": 1.5, "min_image_size": 8},
    )
    table, report = nodes.media_image(params, None)
    assert list(table["caption"]) == ["a photo", "a jpeg"] and (table["source"] == "pics").all()
    assert _reasons(report) == {"undecodable": 1, "missing_caption": 1, "wrong_shape": 1}
    assert (table["height"].tolist(), table["width"].tolist()) == ([12, 16], [10, 20])
    assert table["media"][0] == PNG  # canonical PNG kept as is; the JPEG re-encoded to PNG
    assert table["media"][1][:8] == b"\x89PNG\r\n\x1a\n" and media.decode_image(table["media"][1]).shape == (16, 20, 3)
    _reconciles(table, report)

    table, report = nodes.media_audio(params, None)
    assert list(table["caption"]) == ["red circle", "stereo", "long"] and (table["split"] == "heldout").all()
    assert _reasons(report) == {"undecodable": 1}
    wave, sr = media.decode_audio(table["media"][0])  # 8 kHz float WAV -> 16 kHz PCM16 mono, 2x samples
    assert sr == 16000 and wave.size == 16000 and table["duration_s"][0] == 1.0 and table["sample_rate"][0] == 16000
    assert abs(np.abs(wave).max() - 0.5) < 0.02
    assert media.decode_audio(table["media"][1])[0].shape == (8000,)  # stereo 16 kHz -> mono
    # a configured column the dataset lacks stops before any item, naming it
    with pytest.raises(ValueError, match=r"'talk': no column \['words'\]"):
        nodes.media_audio(
            {**params, "sources": params["sources"][:-1] + [{**params["sources"][-1], "caption_column": "words"}]}, None
        )
    # too long: the limit takes effect
    _, report = nodes.media_audio({**params, "media": {"max_audio_seconds": 0.9}}, None)
    assert _reasons(report) == {"undecodable": 1, "too_long": 2}


def test_parquet_bytes_and_struct_columns_with_questions(tmp_path):
    good_choices = json.dumps(["left", "right"])
    rows = {
        "clip": [VIDEO, VIDEO, media.encode_video(np.zeros((9, 9, 9, 3), np.uint8)), b"\x93NUMPY nope", None],
        "desc": ["moves left", "moves right", "too many frames", "broken", "no media"],
        "q": ["Which way?", "Which way?", "", "", ""],
        "a": ["left", "up", "", "", ""],
        "options": [good_choices, good_choices, "", "", ""],
    }
    pq.write_table(pa.table(rows), tmp_path / "clips.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    src = {
        "name": "clips", "modality": "video", "path": str(tmp_path / "*.parquet"), "media_column": "clip",
        "caption_column": "desc", "question_column": "q", "answer_column": "a", "choices_column": "options",
    }  # fmt: skip
    params = _with_sources(src, media={"max_video_frames": 8})
    table, report = nodes.media_video(params, None)
    assert len(table) == 1 and table["answer"][0] == "left" and table["choices"][0] == good_choices
    assert (table["frames"][0], table["height"][0], table["width"][0]) == (3, 9, 11)
    assert np.array_equal(media.decode_video(table["media"][0]), media.decode_video(VIDEO))
    assert _reasons(report) == {
        "bad_record": 1,  # "up" is not among the choices
        "wrong_shape": 1,  # 9 frames > max_video_frames
        "undecodable": 1,
        "missing_media": 1,
        "unreadable_file": 1,  # corrupt.parquet, as one item
    }
    q = report["quarantined"]
    assert q.loc[q.reason == "unreadable_file", "origin"].item().startswith("corrupt.parquet")
    assert q.loc[q.reason == "wrong_shape", "media"].item() == rows["clip"][2]  # nothing lost
    _reconciles(table, report)
    # HF's {bytes, path} struct (an Image column written to Parquet), with a relative path too
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "b.png").write_bytes(PNG)
    struct = pa.array([{"bytes": PNG, "path": None}, {"bytes": None, "path": str(tmp_path / "files" / "b.png")}])
    pq.write_table(pa.table({"image": struct, "caption": ["x", "y"]}), tmp_path / "files" / "hf.parquet")
    src = {"name": "hfpq", "modality": "image", "path": str(tmp_path / "files" / "hf.parquet"), "media_column": "image"}
    table, report = nodes.media_image(_with_sources(src), None)
    assert list(table["media"]) == [PNG, PNG] and len(report["quarantined"]) == 0
    # a list column of choices is stored as JSON
    listed = {"v": [VIDEO], "caption": ["c"], "q": ["Which way?"], "a": ["left"], "opts": [["left", "right"]]}
    pq.write_table(pa.table(listed), tmp_path / "files" / "listed.parquet")
    src = {
        "name": "listed", "modality": "video", "path": str(tmp_path / "files" / "listed.parquet"),
        "media_column": "v", "question_column": "q", "answer_column": "a", "choices_column": "opts",
    }  # fmt: skip
    table, _ = nodes.media_video(_with_sources(src), None)
    assert json.loads(table["choices"].item()) == ["left", "right"]


def test_folder_with_txt_captions_and_metadata_jsonl(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(PNG)
    (root / "a.txt").write_text("a red square\n")
    (root / "b.jpg").write_bytes(_jpeg())  # no caption anywhere
    (root / "notes.md").write_text("not media, not refused")
    (root / "movie.mp4").write_bytes(b"....")
    (root / "sub" / "c.png").write_bytes(PNG)
    (root / "sub" / "d.png").write_bytes(PNG)
    (root / "sub" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "c.png", "caption": "two blue circles", "question": "How many?", "answer": "two"})
        + "\n{broken json\n"
        + json.dumps({"file_name": "d.png", "text": "one circle"})
        + "\n"
    )
    src = {"name": "photos", "modality": "image", "folder": str(root), "heldout": True}
    table, report = nodes.media_image(_with_sources(src), None)
    assert sorted(table["caption"]) == ["a red square", "one circle", "two blue circles"]
    assert table.set_index("caption").loc["two blue circles", "answer"] == "two"
    assert (table["split"] == "heldout").all() and table["id"].str.startswith("photos:").all()
    assert _reasons(report) == {"missing_caption": 1, "unsupported_format": 1, "bad_metadata": 1}
    assert set(report["quarantined"]["origin"]) == {"b.jpg", "movie.mp4", "sub/metadata.jsonl:2"}
    _reconciles(table, report)
    # max_samples caps the kept items of a source
    table, _ = nodes.media_image(_with_sources({**src, "max_samples": 2}), None)
    assert len(table) == 2
    # a folder that is not there stops before any work, naming the source
    with pytest.raises(FileNotFoundError, match="'gone'"):
        nodes.media_image(_with_sources({"name": "gone", "modality": "image", "folder": str(tmp_path / "nope")}), None)


def test_synth_rows_text_only_users_and_the_report(tmp_path):
    from xoron_pipelines.pipelines.synth.nodes import synth_media_image

    synth = synth_media_image({"media": {"image": {"counts": {"train": 6, "heldout": 3}}, "progress": False}})
    bad = synth.iloc[:1].assign(id="broken", media=[b"junk"])
    params = _base()  # the default configuration: text sources only
    assert Params.model_validate(params).media_sources() == []
    table, report = nodes.media_image(params, pd.concat([synth, bad], ignore_index=True))
    assert len(table) == 9 and table["split"].value_counts().to_dict() == {"train": 6, "heldout": 3}
    assert table.drop(columns=["media"]).equals(synth.drop(columns=["media"]))  # synth rows pass unchanged
    assert list(table["media"]) == list(synth["media"])
    off, off_report = nodes.media_image(_base(media={"include_synth": False}), synth)
    assert len(off) == 0 and len(off_report["quarantined"]) == 0
    assert len(nodes.media_image(_base(modalities=["text"]), synth)[0]) == 0  # modality filtered out
    assert len(nodes.media_image(_base(modalities=["text", "image"]), synth)[0]) == 9
    # synth absent (the catalog loads an empty table) and no media source: empty tables, same schema
    empty_v, rv = nodes.media_video(params, empty_table())
    empty_a, ra = nodes.media_audio(params, None)
    assert len(empty_v) == len(empty_a) == 0 and list(empty_v.columns) == list(media.MEDIA_COLUMNS)
    quarantine, counts, metrics = nodes.media_quarantine(report, rv, ra)
    assert list(quarantine["reason"]) == ["undecodable"] and quarantine["source"].item() == "synth"
    value = {k: v["value"] for k, v in metrics.items()}
    assert value["media.image.in"] == 10 and value["media.image.kept"] == 9 and value["media.image.quarantined"] == 1
    assert value["media.image.train.kept"] == 6 and value["media.image.heldout.kept"] == 3
    assert value["media.quarantined.undecodable"] == 1 and value["media.video.in"] == 0
    assert value["media.kept_by_source.image.synth"] == 9
    assert int(counts["count"].sum()) == 10
    path = tmp_path / "q.parquet"  # the quarantine table round-trips through its dataset
    MediaTableDataset(str(path)).save(quarantine)
    assert MediaTableDataset(str(path)).load().equals(quarantine)
    with pytest.raises(ValueError, match=r"source 'synth', item row 9: undecodable .*on_bad_record is fail"):
        nodes.media_image(_base(on_bad_record="fail"), pd.concat([synth, bad], ignore_index=True))


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "m", "modality": "image"}, "give exactly one of hf, path"),
        ({"name": "m", "modality": "audio", "path": "x.parquet"}, "needs media_column"),
        ({"name": "m", "modality": "image", "folder": "d", "category": "voice_asr"}, "not a image category"),
        ({"name": "m", "modality": "video", "folder": "d", "fps": 3}, r"sources\.14\.fps"),
    ],
)
def test_bad_media_source_entries_are_refused(entry, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        Params.model_validate(_with_sources(entry))


def test_modality_filter_selects_media_sources():
    entry = {"name": "m", "modality": "image", "folder": "d"}
    assert [s.name for s in Params.model_validate(_with_sources(entry)).media_sources()] == ["m"]
    assert Params.model_validate(_with_sources(entry, modalities=["text"])).media_sources() == []
    assert isinstance(ms.MediaSource(**entry), ms.MediaSource)


@pytest.mark.slow
def test_media_nodes_through_kedro(kedro_project):
    """synth writes the media tables, data_processing's media nodes read them and a folder source
    through the catalog: Parquet tables, quarantine, count CSV (in = kept + quarantined)."""
    import contextlib

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from tests.helpers import _end_mlflow_runs, run_pipeline
    from xoron_pipelines.synth import SYNTH_TYPES

    small = {
        "image": {"counts": {"train": 5, "heldout": 2}},
        "video": {"counts": {"train": 2, "heldout": 1}},
        "audio": {"counts": {"train": 3, "heldout": 1}},
        "progress": False,
    }
    run_pipeline(kedro_project, "synth", {"synth.counts": dict.fromkeys(SYNTH_TYPES, 0), "synth.media": small})
    photos = kedro_project / "data" / "01_raw" / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(PNG)
    (photos / "a.txt").write_text("a photo")
    (photos / "b.png").write_bytes(b"broken")
    (photos / "b.txt").write_text("broken photo")
    sources = _base()["sources"] + [{"name": "photos", "modality": "image", "folder": "data/01_raw/photos"}]
    bootstrap_project(kedro_project)
    try:
        with (
            contextlib.chdir(kedro_project),
            KedroSession.create(
                project_path=kedro_project, runtime_params={"data_processing": {"sources": sources, "progress": False}}
            ) as session,
        ):
            session.run(
                pipeline_name="data_processing",
                node_names=["media_image", "media_video", "media_audio", "media_quarantine"],
            )
    finally:
        _end_mlflow_runs()
    out = kedro_project / "data" / "03_primary" / "media"
    image = MediaTableDataset(str(out / "image.parquet")).load()
    assert image.groupby(["source", "split"]).size().to_dict() == {
        ("photos", "train"): 1,
        ("synth", "heldout"): 2,
        ("synth", "train"): 5,
    }
    assert len(MediaTableDataset(str(out / "video.parquet")).load()) == 3
    assert len(MediaTableDataset(str(out / "audio.parquet")).load()) == 4
    quarantine = MediaTableDataset(str(out / "quarantine.parquet")).load()
    assert quarantine[["source", "origin", "reason"]].values.tolist() == [["photos", "b.png", "undecodable"]]
    counts = pd.read_csv(kedro_project / "data" / "08_reporting" / "data_processing_media_counts.csv")
    assert counts["count"].sum() == len(image) + 3 + 4 + 1
