"""Device map (seed 000's use_model_parallel): planning as a pure function, the explicit map's
errors, and a placed model computing exactly what the unplaced one does (all-"cpu" map: the hooks
run, the numbers must not change). Nothing here touches CUDA: GPU availability is mocked."""

from __future__ import annotations

import pytest
import torch

from xoron_pipelines.model import XoronForCausalLM, get_config
from xoron_pipelines.model.placement import expand_device_map, place_model, plan_device_map, resolve_device_map

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _model(tie: bool = True, moe: bool = False, seed: int = 0) -> XoronForCausalLM:
    torch.manual_seed(seed)
    overrides = {"tie_word_embeddings": tie, "vocab_size": 512, "dropout": 0.0}
    if moe:
        overrides.update(use_moe=True, num_experts=4, num_experts_per_tok=2, moe_layer_freq=1)
    return XoronForCausalLM(get_config("nano", **overrides))


def _gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_plan_balances_contiguous_runs_by_parameter_count():
    sizes = [("embed", 40), *[(f"layers.{i}", 10) for i in range(8)], ("head", 40)]  # 160 in all
    plan = plan_device_map(sizes, ["cuda:0", "cuda:1"])
    assert list(plan) == [name for name, _ in sizes]  # every part, in order
    first = ["embed", "layers.0", "layers.1", "layers.2", "layers.3"]
    assert plan == {name: "cuda:0" if name in first else "cuda:1" for name, _ in sizes}
    per_device = {d: sum(s for n, s in sizes if plan[n] == d) for d in ("cuda:0", "cuda:1")}
    assert per_device == {"cuda:0": 80, "cuda:1": 80}
    devices = [plan[n] for n, _ in sizes]
    assert devices == sorted(devices)  # contiguous: never back to an earlier device
    assert plan_device_map(sizes, ["cuda:0", "cuda:1"]) == plan  # deterministic
    uniform = plan_device_map([(f"layers.{i}", 7) for i in range(12)], [f"cuda:{i}" for i in range(4)])
    assert [list(uniform.values()).count(f"cuda:{i}") for i in range(4)] == [3, 3, 3, 3]
    assert set(plan_device_map(sizes, ["cuda:0"]).values()) == {"cuda:0"}


def test_explicit_map_expands_ranges_and_names_what_is_wrong():
    parts = ["embed", "layers.0", "layers.1", "layers.2", "head"]
    spec = {"embed": "cuda:0", "layers.0-1": "cuda:0", "layers.2": "cuda:1", "head": "cuda:1"}
    assert expand_device_map(spec, parts, "k") == {
        "embed": "cuda:0", "layers.0": "cuda:0", "layers.1": "cuda:0", "layers.2": "cuda:1", "head": "cuda:1"
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"k: no device for layers\.2, head"):
        expand_device_map({"embed": "cpu", "layers.0-1": "cpu"}, parts, "k")
    with pytest.raises(ValueError, match=r"k\.layers\.0-5: the model has no part 'layers\.3'"):
        expand_device_map({"layers.0-5": "cpu"}, parts, "k")
    with pytest.raises(ValueError, match=r"k\.layers\.1: part layers\.1 is placed twice"):
        expand_device_map({**spec, "layers.1": "cpu"}, parts, "k")


def test_auto_is_a_no_op_without_gpus_and_balanced_with_them(monkeypatch, caplog):
    model = _model(tie=False)
    _gpus(monkeypatch, 0)
    with caplog.at_level("INFO"):
        assert resolve_device_map("auto", model, "d") is None
    assert "nothing to place" in caplog.text
    assert resolve_device_map(None, model, "d") is None
    _gpus(monkeypatch, 2)
    plan = resolve_device_map("auto", model, "d")  # planning only: nothing is moved
    names = list(model.placement_parts())
    assert list(plan) == names and names[0] == "embed" and names[-1] == "head"
    assert {str(d) for d in plan.values()} == {"cuda:0", "cuda:1"}
    assert plan["embed"].index == 0 and plan["head"].index == 1
    tied = resolve_device_map("auto", _model(tie=True), "d")
    assert tied["head"] == tied["embed"]  # one weight, one device


def test_explicit_map_naming_a_missing_gpu_is_an_error_naming_the_key(monkeypatch):
    _gpus(monkeypatch, 1)
    spec = {"embed": "cuda:0", "layers.0-1": "cuda:0", "layers.2-3": "cuda:1", "head": "cuda:0"}
    with pytest.raises(ValueError, match=r"stages\.language\.distributed\.device_map\.layers\.2 is cuda:1"):
        resolve_device_map(spec, _model(tie=False), "stages.language.distributed.device_map")
    _gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match=r"device_map\.embed is cuda:0 but no CUDA device"):
        resolve_device_map(spec, _model(tie=False), "device_map")
    spec = {"embed": "cpu", "layers.0-3": "cpu", "head": "cuda"}
    with pytest.raises(ValueError, match="ties lm_head to embed_tokens"):
        resolve_device_map(spec, _model(tie=True), "device_map")


@pytest.mark.parametrize("moe", [False, True])
def test_an_all_cpu_map_computes_exactly_what_the_plain_model_does(moe):
    plain, placed = _model(tie=False, moe=moe), _model(tie=False, moe=moe)
    spec = {"embed": "cpu", "layers.0-1": "cpu", "layers.2-3": "cpu", "head": "cpu"}
    placement = place_model(placed, resolve_device_map(spec, placed, "device_map"))
    assert len(placement.handles) == sum(len(m) for m in placed.placement_parts().values())
    calls = []
    placed.model.layers[2].register_forward_pre_hook(lambda m, a: calls.append(1))
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    out_plain, out_placed = plain(input_ids=ids, labels=ids), placed(input_ids=ids, labels=ids)
    assert calls == [1]
    assert torch.equal(out_plain.logits, out_placed.logits)
    assert torch.equal(out_plain.loss, out_placed.loss)
    out_plain.loss.backward()
    out_placed.loss.backward()
    for (name, p), q in zip(plain.named_parameters(), placed.parameters()):
        assert torch.equal(p.grad, q.grad), name
    placement.remove()
    assert not placement.handles
