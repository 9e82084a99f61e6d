"""Seed 004 knobs of the latent group: ``num_workers`` / ``prefetch_factor`` run a real
DataLoader (same batches as in-process), and seed 004's spellings map to the names the code uses."""

from __future__ import annotations

import pytest
import torch
from latent_helpers import SUMMARIES, TEXTS, latent_model, tiny_params
from pydantic import ValidationError

from xoron_pipelines.latent.data import RowBatches, Rows
from xoron_pipelines.latent.model import LatentArchitecture, LatentConfig
from xoron_pipelines.latent.stages import stage_spec
from xoron_pipelines.pipelines.latent import nodes
from xoron_pipelines.pipelines.latent.params import Params


def _tensors(n: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"src_emb": torch.randn(n, 4, generator=g), "dec_ids": torch.randint(0, 50, (n, 3), generator=g)}


def test_worker_processes_give_the_batches_of_the_training_process(monkeypatch):
    made = []
    real = torch.utils.data.DataLoader

    def loader(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    plain, workers = (
        RowBatches(_tensors(), 3, seed=5),
        RowBatches(_tensors(), 3, seed=5, num_workers=2, prefetch_factor=3),
    )
    # two epochs in order, then out of sequence (a resume mid-epoch) and back
    order = [(e, i) for e in range(2) for i in range(len(plain))] + [(1, 2), (0, 1), (0, 2)]
    for e, i in order:
        a, b = plain.batch(e, i), workers.batch(e, i)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (e, i)
    assert not any(k.get("num_workers") == 0 for k in made)
    assert made and all(k["num_workers"] == 2 and k["prefetch_factor"] == 3 for k in made)
    assert len(made) == 4  # one loader per epoch, one per out-of-sequence request (the next one follows on)


def test_stage_batches_use_the_workers_knobs(monkeypatch):
    p = tiny_params(num_workers=2, prefetch_factor=2)
    model = latent_model(p)
    rows = Rows(TEXTS[:4], SUMMARIES[:4], [None] * 4)
    batches = nodes.stage_batches(model, rows, stage_spec("finetune_adapter", p), p, encoder_trains=False)
    assert (batches.num_workers, batches.prefetch_factor) == (2, 2)


def test_prefetch_factor_needs_workers():
    with pytest.raises(ValidationError, match="prefetch_factor=4 needs worker processes"):
        Params.model_validate({"prefetch_factor": 4})
    assert Params.model_validate({"num_workers": 4, "prefetch_factor": 4}).num_workers == 4


def test_seed_spellings_map_to_the_true_names():
    seed = Params.model_validate(
        {
            "modernbert_hidden_dim": 384,
            "gpt2_hidden_dim": 64,
            "pipeline_mode": "two_stage_scientific",
            "wikitext_dataset": "prose_src",
            "arxiv_dataset": "code_src",
            "pretrain_adapter_max_samples_wikitext": 7,
            "pretrain_middle_max_samples_arxiv": 2,
        }
    )
    ours = Params.model_validate(
        {
            "encoder_hidden_dim": 384,
            "decoder_hidden_dim": 64,
            "pipeline_mode": "four_stage",
            "prose_dataset": "prose_src",
            "code_dataset": "code_src",
            "pretrain_adapter_max_samples_prose": 7,
            "pretrain_middle_max_samples_code": 2,
        }
    )
    assert seed == ours and seed.stages() == [
        "pretrain_middle",
        "pretrain_adapter",
        "finetune_middle",
        "finetune_adapter",
    ]
    assert seed.dataset_caps("pretrain_adapter") == {"prose_src": 7, "code_src": 150000}
    assert seed.dataset_caps("pretrain_middle") == {"code_src": 2}
    assert "modernbert_hidden_dim" not in seed.model_dump() and seed.model_dump()["encoder_hidden_dim"] == 384
    # both spellings given (conf file, then a --params override): the later one wins
    assert Params.model_validate({"code_dataset": "a", "arxiv_dataset": "b"}).code_dataset == "b"
    assert Params.model_validate({"arxiv_dataset": "b", "code_dataset": "a"}).code_dataset == "a"
    with pytest.raises(ValidationError, match="pipeline_mode"):
        Params.model_validate({"pipeline_mode": "two_stage"})


def test_architecture_knobs_are_declared_once():
    """Params and the saved LatentConfig share LatentArchitecture: a model built from params
    carries every architecture knob as given."""
    arch = set(LatentArchitecture.model_fields)
    assert arch <= set(Params.model_fields) and arch <= set(LatentConfig.model_fields)
    p = tiny_params(rope_base=500.0, stop_latent_seed=3, use_rmsnorm=False)
    cfg = latent_model(p).cfg
    assert {k: getattr(cfg, k) for k in arch} == {k: getattr(p, k) for k in arch}
