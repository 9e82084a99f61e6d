"""`synth` through a real KedroSession on a copy of the project: catalog, hooks, files."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_pipeline
from xoron_pipelines.datasets.jsonl import JSONLinesDataset
from xoron_pipelines.datasets.media_table import MediaTableDataset
from xoron_pipelines.pipelines.synth import nodes as synth_nodes
from xoron_pipelines.pipelines.synth.nodes import generate_synthetic
from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES
from xoron_pipelines.validation import ParameterError


@pytest.mark.slow
def test_synth_runs_in_kedro_and_writes_partitions(kedro_project):
    counts = {t: 0 for t in SYNTH_TYPES} | {"fim": 4, "chain_of_thought": 3, "preference": 2}
    media_params = {
        "image": {"counts": {"train": 6, "heldout": 2}},
        "video": {"counts": {"train": 3, "heldout": 2}, "frames": 4},
        "audio": {"counts": {"train": 0, "heldout": 0}},
        "progress": False,
    }
    run_pipeline(kedro_project, "synth", {"synth.counts": counts, "synth.seed": 5, "synth.media": media_params})
    out = kedro_project / "data" / "01_raw" / "synth"
    assert sorted(p.name for p in out.iterdir()) == ["chain_of_thought.jsonl", "fim.jsonl", "preference.jsonl"]
    expected, manifest = generate_synthetic({"seed": 5, "counts": counts})
    for kind, rows in expected.items():
        assert JSONLinesDataset(str(out / f"{kind}.jsonl")).load() == rows
    saved = json.loads((kedro_project / "data" / "08_reporting" / "synth_manifest.json").read_text())
    assert saved == manifest and saved["total"] == 9

    # the media tables, through the catalog (Parquet with the media as bytes), equal the nodes' output
    for modality, n in (("image", 8), ("video", 5), ("audio", 0)):
        table = MediaTableDataset(str(kedro_project / "data" / "01_raw" / "media" / f"{modality}.parquet")).load()
        fn = getattr(synth_nodes, f"synth_media_{modality}")
        assert len(table) == n and table.equals(fn({"media": media_params}))

    # disabling a type removes its stale partition (the dataset overwrites the folder)
    run_pipeline(kedro_project, "synth", {"synth.counts": counts | {"fim": 0}, "synth.seed": 5})
    assert sorted(p.name for p in out.iterdir()) == ["chain_of_thought.jsonl", "preference.jsonl"]

    # invalid runtime parameters are refused before any node runs, naming key and file
    with pytest.raises(ParameterError, match="synth.counts.fim"):
        run_pipeline(kedro_project, "synth", {"synth.counts.fim": -2})
