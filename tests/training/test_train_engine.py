"""The training loop's knobs, each shown to take effect (TinyLM on CPU, a handful of steps)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tests.training.tiny_lm import TinyLM
from xoron_pipelines.training import NonFiniteLossError, TensorBatchSource, TrainConfig, train


def _rows(n=16, t=8, seed=0):
    return torch.randint(0, 31, (n, t), generator=torch.Generator().manual_seed(seed))


def _cfg(**kw):
    base = dict(max_steps=4, learning_rate=1e-2, save_steps=1000, logging_steps=1, deterministic=True, seed=3)
    return TrainConfig(**{**base, **kw})


class StepSpy:
    """Records, at every optimizer.step(), the gradients the optimizer is about to apply."""

    def __enter__(self):
        self.grads: list[dict[str, torch.Tensor]] = []
        self.handle = register_optimizer_step_pre_hook(self._hook)
        return self

    def _hook(self, opt, args, kwargs):
        self.grads.append({i: p.grad.clone() for i, p in enumerate(p for g in opt.param_groups for p in g["params"])})

    def __exit__(self, *exc):
        self.handle.remove()

    def norms(self):
        return [float(torch.linalg.vector_norm(torch.stack([g.norm() for g in step.values()]))) for step in self.grads]


def _run(tmp_path, cfg, source, model=None, **kw):
    if model is None:
        torch.manual_seed(0)
        model = TinyLM(dropout=0.0)
    logs = []
    result = train(model, source, cfg, ckpt_dir=tmp_path, on_log=lambda s, m: logs.append((s, m)), progress=False, **kw)
    return model, result, logs


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    rows = _rows()
    lengths = torch.tensor([8, 3, 8, 5, 8, 8, 2, 8, 6, 8, 8, 4, 8, 8, 7, 8])  # unequal targets per micro-batch
    outs = {}
    for name, bs, acc in (("b4x1", 4, 1), ("b2x2", 2, 2)):
        torch.manual_seed(0)
        source = TensorBatchSource(rows, batch_size=bs, seed=1, lengths=lengths)
        with StepSpy() as spy:
            model, result, logs = _run(
                tmp_path / name,
                _cfg(batch_size=bs, gradient_accumulation_steps=acc, max_grad_norm=None, max_steps=3),
                source,
            )
        outs[name] = (spy.grads, [m["loss"] for _, m in logs], model)
    (g1, l1, _), (g2, l2, _) = outs["b4x1"], outs["b2x2"]
    assert l1 == pytest.approx(l2, rel=1e-5)
    for s1, s2 in zip(g1, g2, strict=True):
        for k in s1:
            torch.testing.assert_close(s1[k], s2[k], rtol=1e-5, atol=1e-7)
    # the token-weighted combination matters: the plain mean of the two micro-batch means differs
    torch.manual_seed(0)
    fresh = TinyLM(dropout=0.0)
    src2 = TensorBatchSource(rows, batch_size=2, seed=1, lengths=lengths)
    with torch.no_grad():
        naive = (fresh(**src2.batch(0, 0)).loss + fresh(**src2.batch(0, 1)).loss) / 2
    assert abs(float(naive) - l1[0]) > 1e-3


def test_grad_norm_clipping(tmp_path):
    source = TensorBatchSource(_rows(), batch_size=4, seed=1)
    with StepSpy() as clipped:
        _, _, logs = _run(tmp_path / "c", _cfg(max_grad_norm=0.05), source)
    pre_clip = [m["grad_norm"] for _, m in logs]
    assert all(n > 0.05 for n in pre_clip)  # logged: the norm before clipping
    assert clipped.norms() == pytest.approx([0.05] * 4, rel=1e-4)
    with StepSpy() as free:
        _, _, logs = _run(tmp_path / "f", _cfg(max_grad_norm=0), source)
    assert free.norms() == pytest.approx([m["grad_norm"] for _, m in logs], rel=1e-5)
    assert free.norms()[0] == pytest.approx(pre_clip[0], rel=1e-5)  # same first step


def _poison_loss(model, batch):
    loss = model(**batch).loss
    return loss * math.nan if (batch["input_ids"][:, 0] == 31).any() else loss


def test_nan_guard_skips_and_counts(tmp_path):
    rows = _rows()
    rows[[3, 9], 0] = 31  # two poisoned rows
    source = TensorBatchSource(rows, batch_size=2, seed=1)
    # expected: windows (2 micro-batches) of the stream that contain a poisoned row, until 5 good steps
    good = skipped = micro = 0
    while good < 5:
        window = [source.batch(*divmod(micro + i, len(source))) for i in range(2)]
        micro += 2
        bad = any((b["input_ids"][:, 0] == 31).any() for b in window)
        skipped, good = skipped + bad, good + (not bad)
    assert skipped >= 1
    model = TinyLM(dropout=0.0)
    with StepSpy() as spy:
        _, result, logs = _run(
            tmp_path,
            _cfg(max_steps=5, batch_size=2, gradient_accumulation_steps=2, max_nan_skips=10),
            source,
            model=model,
            loss_fn=_poison_loss,
        )
    assert result.state.nan_skips == skipped and len(spy.grads) == 5
    assert result.state.micro_step == 2 * (5 + skipped) == micro
    assert logs[-1][1]["nan_skips"] == skipped
    assert model.bias_updates == 5  # update_moe_bias after applied steps only
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_guard_aborts_after_the_limit(tmp_path):
    rows = _rows()
    rows[:, 0] = 31
    with pytest.raises(NonFiniteLossError, match=r"3 optimizer steps had a non-finite loss.*max_nan_skips=2"):
        _run(tmp_path, _cfg(max_nan_skips=2), TensorBatchSource(rows, batch_size=2, seed=1), loss_fn=_poison_loss)


def test_non_finite_gradient_is_caught(tmp_path):
    def nan_grad_loss(model, batch):  # finite value, NaN gradient (d sqrt(x)/dx at 0 is inf, times 0)
        return model(**batch).loss + torch.sqrt((model.head.bias * 0).sum())

    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm.*max_nan_skips=0"):
        _run(tmp_path, _cfg(max_nan_skips=0), TensorBatchSource(_rows(), batch_size=2, seed=1), loss_fn=nan_grad_loss)


def test_bf16_autocast_on_cpu(tmp_path):
    source = TensorBatchSource(_rows(), batch_size=4, seed=1)
    torch.manual_seed(0)
    ref, _, ref_logs = _run(tmp_path / "fp32", _cfg(), source)
    torch.manual_seed(0)
    model = TinyLM(dropout=0.0)
    dtypes = []
    model.proj.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    model, _, logs = _run(tmp_path / "bf16", _cfg(precision="bf16"), source, model=model)
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    diffs = [float((a - b).abs().max().detach()) for a, b in zip(model.parameters(), ref.parameters())]
    assert 0 < max(diffs) < 0.05
    assert [m["loss"] for _, m in logs] == pytest.approx([m["loss"] for _, m in ref_logs], rel=0.02)


def test_fp16_grad_scaler_absorbs_overflows(tmp_path):
    calls = []

    def huge_first_loss(model, batch):  # the first two windows overflow fp16 gradients at scale 65536
        calls.append(1)
        return model(**batch).loss * (1e6 if len(calls) <= 2 else 1.0)

    _, result, _ = _run(
        tmp_path,
        _cfg(precision="fp16", max_steps=2, save_steps=1, max_nan_skips=0),
        TensorBatchSource(_rows(), batch_size=4, seed=1),
        loss_fn=huge_first_loss,
    )
    scaler = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["scaler"]
    assert result.state.step == 2 and result.state.nan_skips == 0
    assert result.state.overflow_skips == 2 and scaler["scale"] == 65536.0 / 4  # halved per overflow


def test_fp16_gives_up_when_no_scale_helps(tmp_path):
    def nan_grad_loss(model, batch):
        return model(**batch).loss + torch.sqrt((model.head.bias * 0).sum())

    with pytest.raises(NonFiniteLossError, match="gradient norm"):
        _run(
            tmp_path,
            _cfg(precision="fp16", max_nan_skips=0),
            TensorBatchSource(_rows(), batch_size=4, seed=1),
            loss_fn=nan_grad_loss,
        )


def test_early_stopping(tmp_path):
    values = iter([3.0, 2.0, 2.5, 2.1, 1.0, 0.5])
    calls = []

    def eval_fn(model):
        assert not model.training
        calls.append(1)
        return {"eval_loss": next(values), "accuracy": 0.5}

    source = TensorBatchSource(_rows(), batch_size=4, seed=1)
    model, result, logs = _run(
        tmp_path, _cfg(max_steps=10, eval_steps=1, early_stopping_patience=2), source, eval_fn=eval_fn
    )
    assert result.state.stopped_early and result.state.step == 4 and len(calls) == 4
    assert result.state.best_eval_loss == 2.0
    assert [m["eval_loss"] for _, m in logs if "eval_loss" in m] == [3.0, 2.0, 2.5, 2.1]
    assert result.last_eval == {"eval_loss": 2.1, "eval_accuracy": 0.5}
    assert result.last_checkpoint == tmp_path / "checkpoint-4"
    # re-running the finished run does nothing more and loads the final weights
    again = TinyLM(dropout=0.0)
    rerun = train(
        again,
        source,
        _cfg(max_steps=10, eval_steps=1, early_stopping_patience=2),
        ckpt_dir=tmp_path,
        eval_fn=eval_fn,
        progress=False,
    )
    assert len(calls) == 4 and rerun.state.step == 4 and rerun.resumed_from == tmp_path / "checkpoint-4"
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_early_stopping_min_delta(tmp_path):
    values = iter([3.0, 2.0, 1.9, 0.1])
    _, result, _ = _run(
        tmp_path,
        _cfg(max_steps=10, eval_steps=2, early_stopping_patience=2, early_stopping_min_delta=1.5),
        TensorBatchSource(_rows(), batch_size=4, seed=1),
        eval_fn=lambda m: next(values),
    )
    assert result.state.stopped_early and result.state.step == 6 and result.state.best_eval_loss == 3.0


def test_logging_deterministic_mode_and_seed(tmp_path):
    flags = []

    def loss_fn(model, batch):
        flags.append(torch.are_deterministic_algorithms_enabled())
        return model(**batch).loss

    before = torch.are_deterministic_algorithms_enabled()
    source = TensorBatchSource(_rows(), batch_size=2, seed=1)
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        torch.manual_seed(0)
        model, result, logs = _run(
            tmp_path / name,
            _cfg(max_steps=6, logging_steps=2, seed=seed, warmup_steps=2),
            source,
            model=TinyLM(dropout=0.3),
            loss_fn=loss_fn,
        )
        runs[name] = model
    assert set(flags) == {True} and torch.are_deterministic_algorithms_enabled() == before
    assert [s for s, _ in logs] == [2, 4, 6]
    assert set(logs[0][1]) >= {"loss", "lr", "grad_norm", "tokens_per_s", "nan_skips", "epoch"}
    # the lr the logged step ran at: step 2 is index 1 (warm-up 1/2), step 4 index 3 (cosine at 1/4)
    assert logs[0][1]["lr"] == pytest.approx(0.5e-2) and logs[0][1]["tokens_per_s"] > 0
    assert logs[1][1]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert logs[-1][1]["epoch"] == pytest.approx(6 / 8)
    same = all(torch.equal(a, b) for a, b in zip(runs["a"].parameters(), runs["b"].parameters()))
    other = all(torch.equal(a, b) for a, b in zip(runs["a"].parameters(), runs["c"].parameters()))
    assert same and not other  # the seed drives dropout: same seed, same weights


def test_compile_option_wraps_the_forward(tmp_path, monkeypatch):
    seen = {}

    class Compiled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, **batch):
            self.calls += 1
            return self.inner(**batch)

    def fake_compile(model, **kwargs):
        seen["kwargs"], seen["wrapper"] = kwargs, Compiled(model)
        return seen["wrapper"]

    monkeypatch.setattr(torch, "compile", fake_compile)
    model, result, _ = _run(
        tmp_path,
        _cfg(
            compile=True,
            compile_mode="reduce-overhead",
            max_steps=2,
            save_steps=1,
            gradient_accumulation_steps=2,
            batch_size=2,
        ),
        TensorBatchSource(_rows(), batch_size=2, seed=1),
    )
    assert seen["kwargs"] == {"backend": "inductor", "mode": "reduce-overhead"}
    assert seen["wrapper"].calls == 4  # every micro-batch went through the compiled module
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "checkpoint-2" / "model.safetensors")).keys() == model.state_dict().keys()


def test_compile_really_compiles(tmp_path):
    """A real torch.compile (dynamo + AOTAutograd, no C++ toolchain needed) gives the same weights."""
    source = TensorBatchSource(_rows(), batch_size=2, seed=1)
    try:
        compiled, result, _ = _run(tmp_path / "c", _cfg(compile=True, compile_backend="aot_eager", max_steps=3), source)
        counters = dict(torch._dynamo.utils.counters["stats"])
    finally:
        torch._dynamo.reset()
    plain, _, _ = _run(tmp_path / "p", _cfg(max_steps=3), source)
    assert counters.get("unique_graphs", 0) >= 1  # dynamo captured the forward
    assert all(torch.equal(a, b) for a, b in zip(compiled.parameters(), plain.parameters()))


def test_bad_arguments(tmp_path):
    source = TensorBatchSource(_rows(), batch_size=4, seed=1)
    with pytest.raises(ValueError, match="no eval_fn"):
        _run(tmp_path / "a", _cfg(eval_steps=2), source)
    with pytest.raises(ValueError, match="has no gradient_checkpointing_enable"):
        _run(tmp_path / "b", _cfg(gradient_checkpointing=True), source)
    _run(tmp_path / "c", _cfg(max_steps=1), source)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        _run(tmp_path / "c", _cfg(max_steps=1), source, resume=False)


def test_progress_bar_shows_stage_tokens_per_second_and_eta(tmp_path, capsys):
    train(
        TinyLM(dropout=0.0),
        TensorBatchSource(_rows(), batch_size=4, seed=1),
        _cfg(max_steps=3),
        ckpt_dir=tmp_path,
        desc="pretrain",
        progress=True,
    )
    err = capsys.readouterr().err
    assert "pretrain" in err and "3/3" in err and "tok_s=" in err and "<00:00" in err  # ETA column


def test_batch_tokens_counts_lm_and_preference_batches():
    from xoron_pipelines.training.engine import batch_tokens

    assert batch_tokens({"input_ids": torch.zeros(2, 5), "labels": torch.zeros(2, 5)}) == 10
    pair = {
        "chosen_input_ids": torch.zeros(2, 7),
        "rejected_input_ids": torch.zeros(2, 4),
        "chosen_labels": torch.zeros(2, 7),
    }
    assert batch_tokens(pair) == 22
