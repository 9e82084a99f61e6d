"""The README's "Train on your own data" example, exactly as written there (the YAML block is read
from README.md, so the two cannot drift): one conf/local/parameters.yml naming a JSONL corpus,
`kedro run --pipeline data_processing` without any synth output, then a few pretrain steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dp_helpers import prose_docs, write_jsonl

from tests.helpers import PROJECT_ROOT, run_pipeline

pytestmark = pytest.mark.slow


def readme_example() -> tuple[str, str]:
    """(YAML block, bash block) of the README section "Train on your own data"."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    yaml_block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    bash_block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return yaml_block, bash_block


def test_readme_own_data_example_trains_on_the_users_records(kedro_project: Path):
    yaml_block, bash_block = readme_example()
    assert yaml_block.startswith("# conf/local/parameters.yml\n")
    commands = [line.split("#")[0].strip() for line in bash_block.splitlines()]
    assert "kedro run --pipeline data_processing" in commands and "kedro run --pipeline pretrain" in commands
    (kedro_project / "conf" / "local" / "parameters.yml").write_text(yaml_block)
    source = yaml.safe_load(yaml_block)["data_processing"]["sources"][0]
    docs = prose_docs(300, seed=13)
    corpus = kedro_project / source["path"]
    lines = [{"text": d} for d in docs] + [{"text": docs[0]}, {"body": "no text field"}]
    write_jsonl(corpus, lines)

    run_pipeline(kedro_project, "data_processing")
    data = kedro_project / "data"
    assert not (data / "01_raw" / "synth").exists()  # no synth output was read nor written
    table = pd.read_csv(data / "08_reporting" / "data_processing_record_counts.csv", keep_default_na=False)
    assert set(table.source) == {source["name"]}
    assert table["count"].sum() == len(lines)  # every line of the user's file accounted for
    by = {(r.status, r.reason): r["count"] for _, r in table.iterrows()}
    assert by[("quarantined", "missing_field")] == 1 and by[("filtered", "exact_duplicate")] == 1
    kept = by[("kept", "")]
    assert kept == len(docs)
    manifest = json.loads((data / "05_model_input" / "packing_manifest.json").read_text())
    assert list(manifest["sources"]) == [source["name"]]
    assert sum(s["documents"] for s in manifest["splits"].values()) == kept
    # the stage mixes of conf/base name none of the user's sources: both fall back to the corpus
    assert {name: m["fallback"] for name, m in manifest["stage_mixes"].items()} == {"language": True, "code": True}
    assert all(list(m["sources"]) == [source["name"]] for m in manifest["stage_mixes"].values())
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xoron_pipelines")
    (run,) = client.search_runs([exp.experiment_id], filter_string="metrics.`data_processing.records.in` > 0")
    assert run.data.metrics[f"data_processing.kept_by_source.{source['name']}"] == kept
    assert run.data.metrics["data_processing.records.in"] == len(lines)

    steps = {
        f"pretrain.stages.{stage}": {
            "train": {"max_steps": 2, "warmup_steps": 0, "batch_size": 2, "eval_steps": 2},
            "eval": {"batch_size": 2},
        }
        for stage in ("language", "code")
    }
    run_pipeline(kedro_project, "pretrain", steps)
    for stage in ("language", "code"):
        summary = json.loads((data / "08_reporting" / "training" / f"{stage}.json").read_text())
        # each stage trained on its (fallback) mix: the user's rows, all of them
        assert summary["data_mix"] == stage and summary["steps"] == 2
        assert summary["train_rows"] == manifest["stage_mixes"][stage]["splits"]["train"]["sequences"] > 0
