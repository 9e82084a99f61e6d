"""Bad parameters are refused before any work, naming the key and where it comes from (a conf
file or the command line); `kedro run` then prints a few lines and exits non-zero instead of a
traceback. Numbers are strict and finite, seeds usable, warm-up shorter than the run."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import click
import pytest
from kedro.config import OmegaConfigLoader

from tests.helpers import PROJECT_ROOT, copy_project
from xoron_pipelines.cli import short_user_errors
from xoron_pipelines.training.config import TrainConfig
from xoron_pipelines.validation import MAX_SEED, ParameterError, _format_loc, schemas, validate_all, validate_group

SCHEMAS = schemas()


@pytest.fixture(scope="module")
def conf() -> dict:
    """conf/base + conf/local parameters, loaded as `kedro run` loads them (OmegaConf YAML)."""
    return OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="local")["parameters"]


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, (*path, i))
    else:
        yield path, tree


def _with(values: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(values)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def _rejected(group: str, values: dict, key: str) -> str:
    with pytest.raises(ParameterError) as err:
        validate_group(group, values, SCHEMAS[group])
    assert key in str(err.value), str(err.value)
    return str(err.value)


def test_every_number_in_conf_rejects_non_finite_and_boolean_values(conf):
    """Each float knob of every group refuses inf and nan, each int knob a boolean (and each float
    knob a boolean too), the error naming the dotted key and the group's conf file."""
    checked = {"float": 0, "int": 0}
    for group, values in conf.items():
        for path, value in _leaves(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            key = _format_loc(group, path)
            kind = "float" if isinstance(value, float) else "int"
            for bad in [float("inf"), float("-inf"), float("nan"), True] if kind == "float" else [True, False]:
                message = _rejected(group, _with(values, path, bad), key)
                assert f"conf/base/parameters_{group}.yml" in message
            checked[kind] += 1
    assert checked["float"] >= 40 and checked["int"] >= 80  # the walk did reach the knobs


def test_seeds_must_be_usable(conf):
    seeds = [
        (group, path)
        for group, values in conf.items()
        for path, _ in _leaves(values)
        if isinstance(path[-1], str) and path[-1].endswith("seed")
    ]
    assert len(seeds) >= 7  # synth, data_processing, evaluation x2, embedding_cache, latent x2, stages ...
    for group, path in seeds:
        key = _format_loc(group, path)
        for bad in (-1, MAX_SEED + 1, 1.5, 2.0, "7", True):
            _rejected(group, _with(conf[group], path, bad), key)
        validate_group(group, _with(conf[group], path, MAX_SEED))


def test_ints_are_strict(conf):
    path = ("stages", "language", "train", "max_steps")
    for bad in (10.0, "10", 10.5):
        _rejected("pretrain", _with(conf["pretrain"], path, bad), "pretrain.stages.language.train.max_steps")
    assert validate_group("pretrain", _with(conf["pretrain"], path, 30)).stages["language"].train.max_steps == 30


def test_model_overrides_follow_the_same_number_rules(conf):
    for override, key in (
        ({"rms_norm_eps": float("inf")}, "model.overrides.rms_norm_eps"),
        ({"hidden_size": True}, "model.overrides.hidden_size"),
        ({"initializer_range": True}, "model.overrides.initializer_range"),
    ):
        _rejected("model", {**conf["model"], "overrides": override}, key)


def test_warmup_must_be_shorter_than_the_run(conf):
    train = ("stages", "language", "train")
    base = conf["pretrain"]
    for warmup in (200, 500):  # max_steps is 200
        message = _rejected("pretrain", _with(base, (*train, "warmup_steps"), warmup), "pretrain.stages.language.train")
        assert "warmup_steps" in message and "max_steps" in message
    validate_group("pretrain", _with(base, (*train, "warmup_steps"), 199))
    no_steps = _with(_with(base, (*train, "warmup_steps"), None), (*train, "warmup_ratio"), 1.0)
    _rejected("pretrain", no_steps, "pretrain.stages.language.train.warmup_ratio")
    # a num_epochs run learns its length from the data: refused before the first step
    cfg = TrainConfig(num_epochs=1, warmup_steps=10)
    with pytest.raises(ValueError, match=r"warmup_steps \(10\) must be less than the run's 8 optimizer steps"):
        cfg.warmup(cfg.total_steps(8))
    assert cfg.warmup(cfg.total_steps(11)) == 10


def test_values_from_the_command_line_are_named_as_such(conf):
    cli = {"pretrain": {"stages": {"language": {"train": {"learning_rate": float("inf")}}}}}
    params = copy.deepcopy(conf)
    params["pretrain"]["stages"]["language"]["train"]["learning_rate"] = float("inf")
    with pytest.raises(ParameterError) as err:
        validate_all(params, runtime_params=cli)
    assert "pretrain.stages.language.train.learning_rate" in str(err.value)
    assert "[from the command line (--params)]" in str(err.value)
    # the same bad value in the conf file names the file only
    with pytest.raises(ParameterError) as err:
        validate_all(params, runtime_params={"synth": {"seed": 3}})
    assert "command line" not in str(err.value) and "conf/base/parameters_pretrain.yml" in str(err.value)
    # an unknown group given on the command line
    with pytest.raises(ParameterError, match=r"Unknown top-level parameter 'pretrian' \(from the command line"):
        validate_all({**conf, "pretrian": {"x": 1}}, runtime_params={"pretrian": {"x": 1}})


def test_user_errors_become_short_click_errors_unless_traceback_is_asked():
    def fails(**kwargs):
        raise ParameterError("Invalid parameters in conf/base/parameters_synth.yml:\n  - synth.seed: bad")

    with pytest.raises(click.ClickException) as err:
        short_user_errors(fails)()
    assert err.value.message.startswith("Invalid parameters") and err.value.exit_code == 1
    with pytest.raises(ParameterError):
        short_user_errors(fails)(traceback=True)

    def unknown_pipeline(**kwargs):  # what Kedro raises for `--pipelines pretrian`
        raise ImportError("An error occurred while importing the 'xoron_pipelines.pipelines.pretrian' module.")

    with pytest.raises(click.ClickException) as err:
        short_user_errors(unknown_pipeline)()
    assert err.value.message.startswith("Unknown pipeline 'pretrian': choose among ")
    assert {"synth", "data_processing", "pretrain", "latent"} <= set(
        err.value.message.split("choose among ")[1].split(", ")
    )

    def broken_pipeline(**kwargs):  # a pipeline that fails to import is a bug: traceback kept
        try:
            raise NameError("typo")
        except NameError as exc:
            raise ImportError(
                "An error occurred while importing the 'xoron_pipelines.pipelines.synth' module."
            ) from exc

    with pytest.raises(ImportError):
        short_user_errors(broken_pipeline)()

    from xoron_pipelines.datasets.generation import GenerationMismatchError
    from xoron_pipelines.project_lock import ProjectLockTimeout
    from xoron_pipelines.sandbox import SandboxUnavailableError

    for error in (
        GenerationMismatchError("tokenizer gen a, packed gen b"),
        ProjectLockTimeout("held by pid 7"),
        SandboxUnavailableError("no namespaces"),
    ):

        def raises(error=error, **kwargs):
            raise error

        with pytest.raises(click.ClickException) as err:
            short_user_errors(raises)()
        assert err.value.message == str(error)

    def bug(**kwargs):
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        short_user_errors(bug)()
    with pytest.raises(ValueError, match="other"):
        short_user_errors(lambda: (_ for _ in ()).throw(ValueError("other")))()


def _run(project, *args):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "KEDRO_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("errors") / "project")


def test_kedro_run_with_a_bad_command_line_value_prints_a_short_error(project):
    out = _run(
        project,
        "-m",
        "kedro",
        "run",
        "--pipelines",
        "synth",
        "--params",
        "pretrain.stages.language.train.learning_rate=.inf",
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert 1 <= len(lines) < 15, out.stderr
    assert "pretrain.stages.language.train.learning_rate" in out.stderr and "command line" in out.stderr
    assert "finite number" in out.stderr
    assert not any((project / "data" / "01_raw").iterdir())  # nothing ran


def test_missing_input_is_a_short_error_with_python_m(project):
    # data_processing reads the synth partitions (synth_raw), which a fresh project does not have yet
    out = _run(project, "-m", "xoron_pipelines", "--pipelines", "data_processing")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert 1 <= len(lines) < 15, out.stderr
    # synth_raw is an optional input (own corpora need no synth): the node that reads it for its
    # format: synth sources stops, and the message names the pipeline to run first
    assert "dataset 'synth_raw' does not exist yet (data/01_raw/synth)" in out.stderr
    assert "The synth pipeline produces it: run `kedro run --pipelines synth` first" in out.stderr


def test_a_held_data_lock_is_a_short_error_naming_the_holder(tmp_path):
    from xoron_pipelines.project_lock import LOCK_PATH, ProjectLock

    project = copy_project(tmp_path / "project")  # with a synth partition: its inputs exist
    (project / "data/01_raw/synth").mkdir(parents=True)
    (project / "data/01_raw/synth/chat.jsonl").write_text('{"text": "hello"}\n')

    with ProjectLock(project / LOCK_PATH, "exclusive", 0, "another data_processing run"):
        out = _run(
            project,
            "-m",
            "kedro",
            "run",
            "--pipelines",
            "data_processing",
            "--params",
            "data_processing.lock_timeout_s=0.5",
        )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr
    assert 1 <= len(out.stderr.strip().splitlines()) < 15, out.stderr
    assert str(LOCK_PATH) in out.stderr and f"pid {os.getpid()}" in out.stderr, out.stderr
