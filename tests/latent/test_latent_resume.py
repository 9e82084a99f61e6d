"""Latent stages keep their checkpoints like the pipeline stages (one function,
``configuration_dir``): ``<checkpoint_dir>/<stage>/<content fingerprint>/``; a rerun with only
result-neutral knobs changed resumes, a changed setting or changed rows start a new
configuration beside the kept one."""

from __future__ import annotations

import logging

from latent_helpers import SUMMARIES, TEXTS, latent_model, tiny_params

from xoron_pipelines.latent.data import RowBatches, Rows, stage_tensors
from xoron_pipelines.latent.stages import stage_spec, train_stage


def _run(tmp_path, texts=TEXTS, **overrides):
    p = tiny_params(pretrain_adapter_epochs=2, checkpoint_dir=str(tmp_path), **overrides)
    model = latent_model(p)
    spec = stage_spec("pretrain_adapter", p)
    rows = Rows(texts, texts, [None] * len(texts))
    t = stage_tensors(
        model,
        rows,
        kind=spec.kind,
        identity=spec.identity,
        encoder_trains=False,
        tokenizer=model.decoder_bundle.tokenizer,
        max_target_len=p.max_target_len,
    )
    src = RowBatches(t, p.stage_value(spec.name, "batch_size"), p.seed)
    return train_stage(model, spec, p, {"adapter"}, src, src)


def _configs(tmp_path):
    return sorted(p.name for p in (tmp_path / "pretrain_adapter").iterdir())


def test_latent_rerun_resumes_and_changes_start_a_kept_new_configuration(tmp_path, caplog):
    first = _run(tmp_path)
    (config,) = _configs(tmp_path)
    assert (tmp_path / "pretrain_adapter" / config / f"checkpoint-{first['steps']}").is_dir()
    with caplog.at_level(logging.INFO, logger="xoron_pipelines.training.engine"):
        again = _run(tmp_path, logging_steps=1, save_every=1, progress=False, temperature=0.3)
    assert "resumed from" in caplog.text and again["steps"] == first["steps"]
    assert _configs(tmp_path) == [config]
    _run(tmp_path, learning_rate=1e-3)
    _run(tmp_path, texts=list(reversed(TEXTS)))  # same settings, other row content
    configs = _configs(tmp_path)
    assert len(configs) == 3 and config in configs  # nothing of the earlier configuration deleted
    _run(tmp_path, texts=SUMMARIES, keep_configurations=2)
    assert len(_configs(tmp_path)) == 2 and config not in _configs(tmp_path)


def test_the_pipeline_stages_write_into_their_catalog_checkpoint_store(project_root):
    """Each latent stage node takes its ``latent_<stage>.checkpoints`` store from the catalog,
    rooted at data/06_models/latent/checkpoints (conf's ``checkpoint_dir: null``)."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from xoron_pipelines.datasets.training_store import CheckpointStore
    from xoron_pipelines.pipelines.latent.params import STAGES
    from xoron_pipelines.pipelines.latent.pipeline import create_pipeline

    nodes = {n.name: n for n in create_pipeline().nodes}
    loader = OmegaConfigLoader(str(project_root / "conf"), base_env="base", default_run_env="base")
    catalog = DataCatalog.from_config(loader["catalog"])
    assert loader["parameters"]["latent"]["checkpoint_dir"] is None
    for stage in STAGES:
        assert f"latent_{stage}.checkpoints" in nodes[f"latent_{stage}"].inputs
        store = catalog.load(f"latent_{stage}.checkpoints")
        assert isinstance(store, CheckpointStore)
        assert store.path.as_posix().endswith(f"data/06_models/latent/checkpoints/{stage}")
