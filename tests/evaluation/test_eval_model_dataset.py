"""XoronModelDataset: safetensors round trip, atomic replacement, existence."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import make_model

from xoron_pipelines.datasets.model import XoronModelDataset


def test_round_trip_gives_equal_logits(tmp_path):
    model = make_model(300)
    ds = XoronModelDataset(str(tmp_path / "language"))
    assert not ds.exists()
    ds.save(model)
    assert ds.exists() and sorted(p.name for p in (tmp_path / "language").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = ds.load()
    assert not loaded.training and next(loaded.parameters()).dtype == torch.float32
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


class _Failing:
    """Writes part of a model, then fails (a crash in the middle of save_pretrained)."""

    def save_pretrained(self, path, safe_serialization=True):
        with open(f"{path}/config.json", "w") as fh:
            fh.write("{}")
        raise RuntimeError("disk full")


def test_failing_save_leaves_the_previous_model_intact(tmp_path):
    first, second = make_model(300, seed=1), make_model(300, seed=2)
    ds = XoronModelDataset(str(tmp_path / "code"))
    ds.save(first)
    with pytest.raises(Exception, match="disk full"):
        ds.save(_Failing())
    assert [p.name for p in tmp_path.iterdir()] == ["code"]  # no staging directory left behind
    ids = torch.randint(0, 300, (1, 8))
    with torch.no_grad():
        assert torch.equal(ds.load()(ids).logits, first(ids).logits)
    ds.save(second)  # replacing an existing directory works
    with torch.no_grad():
        assert torch.equal(ds.load()(ids).logits, second(ids).logits)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="no Xoron model"):
        XoronModelDataset(str(tmp_path / "tools")).load()
