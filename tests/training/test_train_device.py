"""The engine on its device, tested on the CPU (nothing here pretends to run CUDA):

* checkpoints are device-neutral: a checkpoint written by a CUDA machine (its RNG tree holds CUDA
  generator states) resumes bit-exactly here, and loading maps the model and optimizer state to
  the training device (``map_location``), the RNG states to the CPU;
* the Triton kernels run in the training loop, forward and backward: one engine step of a tiny
  MoE + MLA Xoron model with ``kernels: triton`` (Triton's CPU interpreter; tests/conftest.py sets
  TRITON_INTERPRET=1 before triton is imported) gives the loss and gradients of ``kernels: torch``.
"""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from xoron_pipelines import kernels as kernels_pkg
from xoron_pipelines import model as model_lib
from xoron_pipelines.kernels import dispatch
from xoron_pipelines.training import TensorBatchSource, TrainConfig, checkpoint, engine, train

# the kernel modules (the package's names of the same spelling are the public functions)
fused_ce, rmsnorm, rope, router_topk, swiglu = (
    importlib.import_module(f"xoron_pipelines.kernels.{m}")
    for m in ("fused_ce", "rmsnorm", "rope", "router_topk", "swiglu")
)

ROWS = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(0))
WEIGHTS = 0.5 + torch.rand(8, 12, generator=torch.Generator().manual_seed(1))  # token weights, not all 1


def _model(kernels: str = "torch"):
    cfg = model_lib.get_config(
        "nano-moe-mla",
        num_layers=2,
        hidden_size=64,
        vocab_size=64,
        num_heads=2,
        intermediate_size=64,
        kv_lora_rank=16,
        q_lora_rank=32,
        max_position_embeddings=64,
        dropout=0.0,
        kernels=kernels,
    )
    torch.manual_seed(0)
    return model_lib.XoronForCausalLM(cfg)


def _cfg(**kw):
    base = dict(max_steps=4, batch_size=2, learning_rate=1e-2, save_steps=2, seed=1, logging_steps=1)
    return TrainConfig(**{**base, **kw})


def _source():
    return TensorBatchSource(ROWS, batch_size=2, seed=0, loss_weights=WEIGHTS)


# ------------------------------------------------------------------------------ portability
def test_a_checkpoint_from_a_cuda_machine_resumes_bit_exactly_on_the_cpu(tmp_path, monkeypatch):
    reference = _model()
    train(reference, _source(), _cfg(), ckpt_dir=tmp_path / "ref", progress=False)

    real_capture = engine.capture_rng

    def as_on_cuda():  # what capture_rng writes on a machine with one GPU
        return {**real_capture(), "torch_cuda": [torch.arange(16, dtype=torch.uint8)]}

    def crash(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "capture_rng", as_on_cuda)
    with pytest.raises(KeyboardInterrupt):
        train(_model(), _source(), _cfg(), ckpt_dir=tmp_path / "run", on_log=crash, progress=False)
    monkeypatch.undo()
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / "rng.json").read_text())
    assert len(saved["torch_cuda"]) == 1  # the CUDA generator state is in the checkpoint

    loads = []
    real_load = checkpoint.load_file
    monkeypatch.setattr(
        checkpoint, "load_file", lambda f, device="cpu": (loads.append((f, device)), real_load(f, device))[1]
    )
    resumed = _model()
    result = train(resumed, _source(), _cfg(), ckpt_dir=tmp_path / "run", progress=False)
    assert result.resumed_from == tmp_path / "run" / "checkpoint-2"
    ref, res = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref[k], res[k]) for k in ref)  # CUDA RNG state ignored here, CPU ones restored
    where = {f.rsplit("/", 1)[-1]: device for f, device in loads}
    assert where == {
        "model.safetensors": "cpu",  # map_location = the device the model trains on
        "optimizer.safetensors": "cpu",
        "rng.safetensors": "cpu",  # generator states always on the CPU
    }


def test_loading_maps_model_and_optimizer_to_the_training_device(tmp_path, monkeypatch):
    """The engine passes its device as ``map_location``; the model and optimizer tensors land on
    it, the RNG state stays on the CPU (the safetensors reads are recorded, not run on a GPU)."""
    train(_model(), _source(), _cfg(max_steps=2), ckpt_dir=tmp_path / "run", progress=False)
    seen = []
    real = engine.load_checkpoint
    monkeypatch.setattr(engine, "load_checkpoint", lambda p, **kw: (seen.append(kw), real(p, **kw))[1])
    train(_model(), _source(), _cfg(max_steps=3), ckpt_dir=tmp_path / "run", progress=False)
    assert seen == [{"verify": False, "map_location": torch.device("cpu")}]

    devices = []
    real_file = checkpoint.load_file
    monkeypatch.setattr(
        checkpoint, "load_file", lambda f, device="cpu": (devices.append(device), real_file(f))[1]
    )  # reads on the CPU: there is no cuda:1 here
    checkpoint.load_checkpoint(tmp_path / "run" / "checkpoint-2", map_location="cuda:1")
    assert sorted(devices) == ["cpu", "cuda:1", "cuda:1"]  # rng | model + optimizer (trainer_state: no tensors)


# ------------------------------------------------------------------------------ Triton in the loop
def _counting(monkeypatch, calls: dict[str, int]) -> None:
    """Count the Triton forward functions, the Triton backward passes, and check the fused CE
    gets the token weights."""

    def wrap(name, fn, check=None):
        def counted(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            if check is not None:
                check(*args)
            return fn(*args, **kwargs)

        return counted

    def has_weights(hidden, weight, labels, loss_weights, *rest):
        assert loss_weights is not None and not torch.all(loss_weights == 1)

    for name in ("rms_norm", "apply_rope", "swiglu", "router_topk"):
        monkeypatch.setattr(dispatch, f"{name}_triton", wrap(f"{name}.fwd", getattr(dispatch, f"{name}_triton")))
    ce = dispatch.fused_linear_cross_entropy_triton
    monkeypatch.setattr(dispatch, "fused_linear_cross_entropy_triton", wrap("fused_ce.fwd", ce, has_weights))
    rows = fused_ce._FWD_GRAD_FNS["triton"]  # the Triton row kernels that give the CE gradient
    monkeypatch.setitem(fused_ce._FWD_GRAD_FNS, "triton", wrap("fused_ce.grad_rows", rows))
    for name, cls in (
        ("rms_norm", rmsnorm._RMSNormFunction),
        ("apply_rope", rope._RoPEFunction),
        ("swiglu", swiglu._SwiGLUFunction),
        ("router_topk", router_topk._RouterTopkFunction),
        ("fused_ce", fused_ce._LinearCEGradInForward),
    ):
        monkeypatch.setattr(cls, "backward", staticmethod(wrap(f"{name}.bwd", cls.backward)))


def _one_step(kernels: str, tmp_path, monkeypatch) -> tuple[float, list[torch.Tensor]]:
    """Loss and gradients of one engine step (the gradients as the engine clips them)."""
    grads = []
    clip = torch.nn.utils.clip_grad_norm_

    def capture(params, max_norm):
        grads.extend(p.grad.detach().clone() for p in params)
        return clip(params, max_norm)

    with monkeypatch.context() as m:
        m.setattr(engine.torch.nn.utils, "clip_grad_norm_", capture)
        cfg = _cfg(max_steps=1, precision="fp32", compile=False)
        result = train(_model(kernels), _source(), cfg, ckpt_dir=tmp_path / kernels, progress=False)
    return result.history[0]["loss"], grads


def test_triton_kernels_run_forward_and_backward_in_the_training_step(tmp_path, monkeypatch):
    assert dispatch.triton_interpreting(), "tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported"
    assert kernels_pkg.fused_linear_cross_entropy is dispatch.fused_linear_cross_entropy  # what the model calls
    loss_torch, grads_torch = _one_step("torch", tmp_path, monkeypatch)
    calls: dict[str, int] = {}
    _counting(monkeypatch, calls)
    loss_triton, grads_triton = _one_step("triton", tmp_path, monkeypatch)
    for name in ("rms_norm", "apply_rope", "swiglu", "router_topk", "fused_ce"):
        assert calls.get(f"{name}.fwd", 0) > 0 and calls.get(f"{name}.bwd", 0) > 0, (name, calls)
    assert calls["fused_ce.grad_rows"] > 0
    assert loss_triton == pytest.approx(loss_torch, rel=1e-5)
    assert len(grads_triton) == len(grads_torch) > 0
    for a, b in zip(grads_triton, grads_torch):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_auto_kernels_stay_the_torch_references_on_cpu(tmp_path, monkeypatch):
    calls: dict[str, int] = {}
    _counting(monkeypatch, calls)
    _one_step("auto", tmp_path, monkeypatch)
    # no Triton function ran; the fused CE's autograd.Function (which only scales the gradients
    # its row kernels made in forward) is the same for both backends
    assert calls == {"fused_ce.bwd": 1}


def test_auto_precision_and_compile_are_fp32_eager_on_the_cpu(tmp_path, monkeypatch):
    compiled, dtypes = [], []
    monkeypatch.setattr(engine.torch, "compile", lambda model, **kw: compiled.append(kw) or model)
    model = _model()
    model.model.layers[0].self_attn.kv_a_proj_with_mqa.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    cfg = _cfg(max_steps=1)
    assert (cfg.precision, cfg.compile, cfg.tf32) == ("auto", "auto", False)  # the defaults
    train(model, _source(), cfg, ckpt_dir=tmp_path / "auto", progress=False)
    assert compiled == [] and set(dtypes) == {torch.float32}
    train(_model(), _source(), _cfg(max_steps=1, compile=True), ckpt_dir=tmp_path / "on", progress=False)
    assert len(compiled) == 1  # an explicit true still compiles on the CPU
