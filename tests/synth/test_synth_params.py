"""Parameter schema of the synth pipeline: errors name the key and the conf file."""

from __future__ import annotations

import pytest
import yaml

from xoron_pipelines.pipelines.synth.params import SYNTH_TYPES, Params
from xoron_pipelines.validation import ParameterError, validate_group

CONF = "conf/base/parameters_synth.yml"


def test_conf_file_validates_and_lists_every_type(project_root):
    raw = yaml.safe_load((project_root / CONF).read_text())
    assert list(raw) == ["synth"]
    assert list(raw["synth"]["counts"]) == list(SYNTH_TYPES)
    p = validate_group("synth", raw["synth"], Params)
    assert p.seed == 42
    assert sum(p.difficulty.normalised().values()) == pytest.approx(1.0)


def test_negative_count_names_key_and_file():
    with pytest.raises(ParameterError) as err:
        validate_group("synth", {"counts": {"fim": -1}}, Params)
    assert "synth.counts.fim" in str(err.value) and CONF in str(err.value)


def test_unknown_type_is_rejected_with_valid_names():
    with pytest.raises(ParameterError) as err:
        validate_group("synth", {"counts": {"poetry": 3}}, Params)
    msg = str(err.value)
    assert "synth.counts" in msg and "poetry" in msg and "chain_of_thought" in msg and CONF in msg


@pytest.mark.parametrize(
    ("difficulty", "key"),
    [
        ({"easy": 0, "medium": 0, "hard": 0}, "synth.difficulty"),
        ({"hard": -0.5}, "synth.difficulty.hard"),
        ({"extreme": 1.0}, "synth.difficulty.extreme"),
    ],
)
def test_bad_difficulty_weights(difficulty, key):
    with pytest.raises(ParameterError) as err:
        validate_group("synth", {"difficulty": difficulty}, Params)
    assert key in str(err.value)


def test_difficulty_is_normalised():
    p = validate_group("synth", {"difficulty": {"easy": 2, "medium": 1, "hard": 1}}, Params)
    assert p.difficulty.normalised() == {"easy": 0.5, "medium": 0.25, "hard": 0.25}


def test_unknown_top_level_key():
    with pytest.raises(ParameterError, match="synth.sead"):
        validate_group("synth", {"sead": 1}, Params)
