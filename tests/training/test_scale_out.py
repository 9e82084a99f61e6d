"""Scale-out knobs on GPUs, tested on a CPU: how many processes ``nproc_per_node: auto`` launches,
which device each rank takes, the errors before launching, FSDP2's mixed-precision policy, the
Float8 option's errors and layer filter, and checkpoints that move between FSDP2 ranks and a
single process. CUDA is never used: its availability, device count and capability are mocked
for the resolution logic only."""

from __future__ import annotations

import functools
from unittest import mock

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

from tests.training.test_distributed import CFG, _full_state, make_model, make_source, one_rank_group  # noqa: F401
from xoron_pipelines.training import TrainConfig, distributed, float8, train
from xoron_pipelines.training.distributed import DistributedSettings, check_compatible, distributed_train, rank_device
from xoron_pipelines.training.parallel import DataParallel, fsdp_mixed_precision
from xoron_pipelines.training.schema import StageParams


def _gpus(monkeypatch, count: int, capability=(9, 0), bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mocked GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


# ---------------------------------------------------------------------- nproc_per_node / rank devices
@pytest.mark.parametrize("gpus, expected", [(0, 1), (1, 1), (4, 4), (8, 8)])
def test_nproc_auto_is_the_number_of_visible_gpus(monkeypatch, gpus, expected):
    _gpus(monkeypatch, gpus)
    settings = DistributedSettings(nproc_per_node="auto", nnodes=2)
    assert settings.nproc == expected and settings.world_size == 2 * expected
    assert settings.launches  # two nodes
    assert DistributedSettings(nproc_per_node="auto").launches is (expected > 1)
    assert DistributedSettings(nproc_per_node=3).nproc == 3  # a number is taken as given


def test_nproc_auto_on_a_cpu_machine_trains_in_this_process_and_says_so(monkeypatch, tmp_path, caplog):
    _gpus(monkeypatch, 0)
    cfg = TrainConfig(**{**CFG, "eval_steps": None}, batch_size=4)
    with (
        mock.patch.object(distributed, "elastic_launch", side_effect=AssertionError("must not launch")),
        caplog.at_level("INFO"),
    ):
        model, result = distributed_train(
            make_model, functools.partial(make_source, 4), cfg, DistributedSettings(nproc_per_node="auto"),
            ckpt_dir=tmp_path, progress=False,
        )  # fmt: skip
    assert result.state.step == CFG["max_steps"]
    assert "nproc_per_node auto: no CUDA GPU visible, 1 process on the CPU" in caplog.text


def test_each_rank_takes_its_own_gpu_and_auto_backend_follows_the_device(monkeypatch):
    _gpus(monkeypatch, 2)
    assert rank_device("cuda", 1) == torch.device("cuda", 1)
    assert rank_device("cpu", 1) == torch.device("cpu")
    settings = DistributedSettings(nproc_per_node=2)
    assert settings.resolved_backend("auto") == "nccl"
    assert settings.resolved_backend("cpu") == "gloo"  # CPU ranks on a GPU machine
    with pytest.raises(ValueError, match="nccl' needs ranks on GPUs"):
        DistributedSettings(nproc_per_node=2, backend="nccl").resolved_backend("cpu")
    _gpus(monkeypatch, 0)
    assert settings.resolved_backend("auto") == "gloo"


def test_more_gpu_ranks_than_gpus_is_an_error_naming_the_key_before_launch(monkeypatch):
    _gpus(monkeypatch, 1)
    cfg = TrainConfig(**CFG)
    with (
        mock.patch.object(distributed, "elastic_launch", side_effect=AssertionError("must not launch")),
        pytest.raises(ValueError, match=r"stages\.language\.distributed\.nproc_per_node is 2: one GPU per process, "
                                        r"but only 1 GPU\(s\) are visible"),
    ):  # fmt: skip
        check_compatible(cfg, DistributedSettings(nproc_per_node=2), "auto", key="stages.language.distributed")
    with mock.patch.object(distributed, "elastic_launch", side_effect=AssertionError("must not launch")):
        with pytest.raises(ValueError, match="nproc_per_node is 2"):
            distributed_train(make_model, make_source, cfg, DistributedSettings(nproc_per_node=2), ckpt_dir="unused")
    # CPU ranks are fine on the same machine (the gloo tests use them), and so is one rank per GPU
    assert check_compatible(cfg, DistributedSettings(nproc_per_node=2), "cpu") == "cpu"
    assert check_compatible(cfg, DistributedSettings(nproc_per_node="auto"), "auto") == "cuda"
    _gpus(monkeypatch, 2)
    assert check_compatible(cfg, DistributedSettings(nproc_per_node=2), "cuda") == "cuda"
    with pytest.raises(ValueError, match="names one GPU"):
        check_compatible(cfg, DistributedSettings(nproc_per_node=2), "cuda:1")


def test_batch_size_must_split_over_the_auto_processes(monkeypatch):
    _gpus(monkeypatch, 3)
    stage = {"train": {"max_steps": 1, "batch_size": 4}, "distributed": {"nproc_per_node": "auto"}}
    with pytest.raises(ValidationError, match="multiple of 3"):
        StageParams.model_validate(stage)
    _gpus(monkeypatch, 2)
    assert StageParams.model_validate(stage).distributed.world_size == 2


@pytest.mark.parametrize("bad", [{"nproc_per_node": 0}, {"nproc_per_node": "all"}, {"nproc_per_node": True}])
def test_bad_nproc_values_are_rejected_naming_the_key(bad):
    with pytest.raises(ValidationError, match="nproc_per_node"):
        DistributedSettings(**bad)


# ---------------------------------------------------------------------- device_map knob
def test_device_map_knob_and_seed_alias(monkeypatch):
    assert DistributedSettings(use_model_parallel=True).device_map == "auto"
    assert DistributedSettings(use_model_parallel=False).device_map is None
    assert DistributedSettings(device_map={"embed": "cpu"}).device_map == {"embed": "cpu"}
    with pytest.raises(ValidationError, match="contradicts use_model_parallel"):
        DistributedSettings(use_model_parallel=False, device_map="auto")
    with pytest.raises(ValidationError, match="needs nproc_per_node x nnodes = 1"):
        DistributedSettings(device_map="auto", nproc_per_node=2)


# ---------------------------------------------------------------------- FSDP2 mixed precision
def test_fsdp_mixed_precision_policy_follows_the_precision(monkeypatch):
    _gpus(monkeypatch, 1, bf16=True)
    policy = fsdp_mixed_precision("bf16", torch.device("cuda", 0))
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert fsdp_mixed_precision("auto", torch.device("cuda", 0)).param_dtype == torch.bfloat16
    assert fsdp_mixed_precision("auto", torch.device("cpu")) is None  # auto on CPU is fp32
    assert fsdp_mixed_precision("fp32", torch.device("cuda", 0)) is None
    _gpus(monkeypatch, 1, bf16=False)
    assert fsdp_mixed_precision("auto", torch.device("cuda", 0)) is None  # e.g. a V100


def test_fsdp2_shards_with_the_bf16_policy(one_rank_group):  # noqa: F811
    """bf16 FSDP2 on CPU/gloo: the forward runs on bf16 parameters, the sharded master weights stay fp32."""
    model = make_model()
    seen = []
    model.proj.register_forward_pre_hook(lambda m, a: seen.append(m.weight.dtype))
    parallel = DataParallel("fsdp2", torch.device("cpu"), mixed_precision=fsdp_mixed_precision("bf16", "cpu"))
    wrapped = parallel.wrap(model)
    wrapped(input_ids=torch.zeros(2, 4, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long)).loss.backward()
    assert seen == [torch.bfloat16]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="fsdp2 only"):
        DataParallel("ddp", torch.device("cpu"), mixed_precision=fsdp_mixed_precision("bf16", "cpu"))


# ---------------------------------------------------------------------- checkpoint portability
class _Stop(Exception):
    pass


def _stop_at(step):
    def on_log(s, metrics):
        if s == step:
            raise _Stop

    return on_log


def _train(model, ckpt_dir, fsdp: bool, on_log=None):
    cfg = TrainConfig(**{**CFG, "eval_steps": None}, batch_size=4, gradient_accumulation_steps=2)
    parallel = DataParallel("fsdp2", torch.device("cpu")) if fsdp else None
    return train(model, make_source(4), cfg, ckpt_dir=ckpt_dir, progress=False, on_log=on_log, parallel=parallel)


@pytest.mark.parametrize("first, then", [("fsdp2", "single"), ("single", "fsdp2")])
def test_a_checkpoint_moves_between_fsdp2_and_a_single_process(one_rank_group, tmp_path, first, then):  # noqa: F811
    """The first half of a run with one layout, resumed with the other: the same weights as straight
    through (FSDP2's optimizer state is saved in the plain layout, parameter ids, not names)."""
    torch.manual_seed(3)
    straight = make_model()
    _train(straight, tmp_path / "straight", fsdp=False)
    torch.manual_seed(3)
    with pytest.raises(_Stop):
        _train(make_model(), tmp_path / "run", fsdp=first == "fsdp2", on_log=_stop_at(5))  # after checkpoint-4
    saved = load_file(str(tmp_path / "run" / "checkpoint-4" / "model.safetensors"))
    assert {t.device.type for t in saved.values()} == {"cpu"}
    torch.manual_seed(3)
    resumed = make_model()
    result = _train(resumed, tmp_path / "run", fsdp=then == "fsdp2")
    assert result.resumed_from == tmp_path / "run" / "checkpoint-4"
    expected, got = _full_state(straight), _full_state(resumed)
    moved = max(float((expected[k] - make_model().state_dict()[k]).abs().max()) for k in expected)
    assert moved > 1e-2  # the steps after the resume really trained
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)


# ---------------------------------------------------------------------- Float8
def test_float8_layer_filter_selects_linears_with_dims_multiple_of_16_except_the_head():
    f = float8.float8_layer_filter
    assert f(nn.Linear(64, 128), "model.layers.0.mlp.up_proj")
    assert not f(nn.Linear(64, 100), "model.layers.0.mlp.up_proj")  # 100 is not a multiple of 16
    assert not f(nn.Linear(24, 64), "model.layers.0.self_attn.q_proj")
    assert not f(nn.Linear(64, 512), "lm_head")
    assert not f(nn.Embedding(512, 64), "model.embed_tokens")
    assert not f(nn.LayerNorm(64), "model.norm")

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.gate, self.router = nn.Linear(32, 64), nn.Linear(32, 64), nn.Linear(32, 6)
            self.lm_head = nn.Linear(32, 512)

    assert float8.float8_layers(Toy()) == ["up", "gate"]


def test_float8_selects_the_xoron_projection_layers():
    from xoron_pipelines.model import XoronForCausalLM, get_config

    model = XoronForCausalLM(get_config("nano", tie_word_embeddings=False, vocab_size=512))
    names = float8.float8_layers(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert "lm_head" in linears and "lm_head" not in names
    assert names == [n for n in linears if n != "lm_head"]  # the nano dims are all multiples of 16


def test_float8_errors_name_the_key_before_any_work(monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(ValidationError, match="float8 training needs a CUDA GPU"):
        TrainConfig(max_steps=1, float8=True)
    _gpus(monkeypatch, 1, capability=(8, 0))
    with pytest.raises(ValidationError, match=r"float8.*compute capability >= 8.9.*Mocked GPU has 8.0"):
        TrainConfig(max_steps=1, float8=True)
    _gpus(monkeypatch, 1, capability=(9, 0))
    with (
        mock.patch("importlib.util.find_spec", lambda name: None if name == "torchao" else mock.DEFAULT),
        pytest.raises(ValidationError, match="pip install torchao"),
    ):
        TrainConfig(max_steps=1, float8=True)
    with pytest.raises(ValueError, match="train.float8: float8 training needs a CUDA GPU.*the device is cpu"):
        float8.check_float8(torch.device("cpu"))  # a stage on device cpu on a GPU machine
    with mock.patch.object(float8.importlib.util, "find_spec", return_value=object()):
        cfg = TrainConfig(max_steps=1, float8=True)  # a Hopper GPU with torchao: accepted
        with pytest.raises(ValueError, match="train.float8.*the device is cpu"):
            check_compatible(cfg, DistributedSettings(), "cpu")
    assert TrainConfig(max_steps=1).float8 is False


def test_revert_float8_restores_plain_linears_sharing_the_parameters():
    class Float8Linear(nn.Linear):  # stands in for torchao's class (same name, an nn.Linear)
        pass

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
    fake = Float8Linear(16, 32)
    fake.weight, fake.bias = model[0].weight, model[0].bias
    model[0] = fake
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert float8.revert_float8(model) == 1
    assert type(model[0]) is nn.Linear and model[0].weight is fake.weight and model[0].bias is fake.bias
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert float8.revert_float8(model) == 0


def test_the_engine_converts_before_training_and_reverts_after(monkeypatch, tmp_path):
    """The wiring of ``train.float8`` in the engine, with torchao replaced by a stand-in (no GPU here,
    so the float8 matmuls themselves are not run): the selected layers are converted once, before the
    optimizer is built, train as converted layers, and come back as plain ``nn.Linear``."""
    import sys
    import types

    from xoron_pipelines.training import config as config_mod

    class Float8Linear(nn.Linear):  # the stand-in records its forwards
        calls = 0

        def forward(self, x):
            Float8Linear.calls += 1
            return super().forward(x)

    converted = []

    def convert_to_float8_training(model, module_filter_fn):
        for name, module in list(model.named_modules()):
            if name and module_filter_fn(module, name):
                fake = Float8Linear(module.in_features, module.out_features, device="meta")
                fake.weight, fake.bias = module.weight, module.bias
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, fake)
                converted.append(name)

    fake_torchao = types.ModuleType("torchao")
    fake_torchao.float8 = types.SimpleNamespace(convert_to_float8_training=convert_to_float8_training)
    monkeypatch.setitem(sys.modules, "torchao", fake_torchao)
    monkeypatch.setitem(sys.modules, "torchao.float8", fake_torchao.float8)
    monkeypatch.setattr(config_mod, "check_float8", lambda *a, **k: None)  # stands in for a Hopper GPU
    monkeypatch.setattr(float8, "check_float8", lambda *a, **k: None)
    cfg = TrainConfig(**{**CFG, "eval_steps": None}, batch_size=4, float8=True)
    torch.manual_seed(3)
    model = make_model()
    before = model.proj.weight
    train(model, make_source(4), cfg, ckpt_dir=tmp_path, progress=False)
    assert converted == ["proj", "head"]  # TinyLM: 16 -> 16 and 16 -> 32; the embedding is no Linear
    assert Float8Linear.calls == CFG["max_steps"] * 2  # every forward of the training ran them (2 layers)
    assert type(model.proj) is nn.Linear and type(model.head) is nn.Linear
    assert model.proj.weight is before  # the same parameter, trained in place
    torch.manual_seed(3)
    reference = make_model()
    train(reference, make_source(4), TrainConfig(**{**CFG, "eval_steps": None}, batch_size=4), ckpt_dir=tmp_path / "r",
          progress=False)  # fmt: skip
    assert torch.equal(reference.proj.weight, model.proj.weight)  # the stand-in computes in fp32: same result


def test_fsdp2_shards_each_xoron_decoder_layer_then_the_root(one_rank_group):  # noqa: F811
    from torch.distributed.fsdp import FSDPModule

    from xoron_pipelines.model import XoronForCausalLM, get_config

    model = XoronForCausalLM(get_config("nano", vocab_size=512))
    DataParallel("fsdp2", torch.device("cpu"), mixed_precision=fsdp_mixed_precision("bf16", "cpu")).wrap(model)
    sharded = [name for name, module in model.named_modules() if isinstance(module, FSDPModule)]
    assert sharded == ["", *[f"model.layers.{i}" for i in range(model.config.num_layers)]]
