"""PEER: every expert reachable (index = i0 * n1 + i1), keys learn, reference parity, usage tracking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xoron_pipelines.model.config import XoronConfig
from xoron_pipelines.model.peer import PEER

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make_config(**overrides) -> XoronConfig:
    base = dict(
        hidden_size=16,
        num_heads=2,
        attention_type="mha",
        rope_scaling=None,
        num_layers=2,
        intermediate_size=32,
        vocab_size=64,
        use_moe=False,
        use_peer=True,
        peer_start_layer=0,
        peer_num_experts=64,
        peer_product_key_dim=[8, 8],
        peer_num_experts_per_tok=3,
        peer_num_heads=2,
        peer_query_dim=8,
        peer_expert_hidden_size=1,
        peer_batch_norm_query=True,
        peer_usage_threshold=5.0,
    )
    base.update(overrides)
    return XoronConfig(**base)


def make_peer(seed: int = 0, **overrides) -> PEER:
    """PEER with O(1) random weights so that scores are far from ties."""
    torch.manual_seed(seed)
    peer = PEER(make_config(**overrides), layer_idx=0)
    with torch.no_grad():
        for name, p in peer.named_parameters():
            if "query_norm" not in name:
                p.normal_(0.0, 0.5)
    return peer


def directions(n: int) -> torch.Tensor:
    """n distinct unit vectors in 2-D; the dot product with direction a is maximal at a."""
    angles = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()


def crafted_peer(n0: int, n1: int, hidden: int = 4) -> PEER:
    """One head, top-1, identity query network, sub-keys on the unit circle.

    The input ``concat(dir_a, dir_b, 0...)`` selects exactly the expert pair (a, b).
    """
    peer = PEER(
        make_config(
            hidden_size=hidden,
            peer_num_experts=n0 * n1,
            peer_product_key_dim=[n0, n1],
            peer_num_experts_per_tok=1,
            peer_num_heads=1,
            peer_query_dim=4,
            peer_batch_norm_query=False,
        )
    )
    with torch.no_grad():
        peer.query_proj.weight.copy_(torch.eye(4, hidden))
        peer.sub_keys_0.copy_(directions(n0)[None])
        peer.sub_keys_1.copy_(directions(n1)[None])
    return peer


def crafted_inputs(pairs: list[tuple[int, int]], n0: int, n1: int, hidden: int = 4) -> torch.Tensor:
    d0, d1 = directions(n0), directions(n1)
    x = torch.zeros(1, len(pairs), hidden)
    for t, (a, b) in enumerate(pairs):
        x[0, t, :2], x[0, t, 2:4] = d0[a], d1[b]
    return x


def test_every_expert_is_reachable_and_index_is_i0_times_n1_plus_i1():
    n0, n1 = 16, 16
    peer = crafted_peer(n0, n1)
    pairs = [(a, b) for a in range(n0) for b in range(n1)]
    x = crafted_inputs(pairs, n0, n1)
    _, idx = peer.retrieve(x.view(-1, 4))
    expected = torch.tensor([a * n1 + b for a, b in pairs])
    assert torch.equal(idx[:, 0, 0], expected)
    assert set(idx.flatten().tolist()) == set(range(n0 * n1))
    assert idx.max().item() == n0 * n1 - 1
    # regression: llm720's i0 + i1 would reach only n0 + n1 - 1 = 31 distinct experts
    assert len(set(idx.flatten().tolist())) > n0 + n1 - 1


def test_rectangular_key_tables_use_n1_as_multiplier():
    n0, n1 = 4, 8  # n0 != n1: a formula using n0 as multiplier would collide
    peer = crafted_peer(n0, n1)
    pairs = [(a, b) for a in range(n0) for b in range(n1)]
    _, idx = peer.retrieve(crafted_inputs(pairs, n0, n1).view(-1, 4))
    assert idx[:, 0, 0].tolist() == [a * n1 + b for a, b in pairs]


def test_million_experts_last_index_reachable():
    n = 1024
    peer = crafted_peer(n, n, hidden=8)
    assert peer.down_embed.weight.shape == (2**20, 8) and peer.up_embed.weight.shape == (2**20, 8)
    pairs = [(1023, 1023), (1023, 0), (0, 1023), (517, 3)]
    _, idx = peer.retrieve(crafted_inputs(pairs, n, n, hidden=8).view(-1, 8))
    assert idx[:, 0, 0].tolist() == [1048575, 1047552, 1023, 517 * 1024 + 3]
    y = peer(crafted_inputs(pairs, n, n, hidden=8))
    assert y.shape == (1, 4, 8)


def reference_forward(peer: PEER, x: torch.Tensor) -> torch.Tensor:
    """Per-token, per-head loop that scores all N experts by brute force (no product-key shortcut)."""
    flat = x.reshape(-1, x.shape[-1])
    n1, eh, hidden = peer.n1, peer.expert_hidden_size, peer.hidden_size
    rows = []
    for t in range(flat.shape[0]):
        xt = flat[t]
        out = torch.zeros_like(xt)
        q_all = (peer.query_proj.weight @ xt).view(peer.num_heads, peer.query_dim)
        for h in range(peer.num_heads):
            q = q_all[h]
            if peer.query_norm is not None:
                q = F.layer_norm(
                    q, (peer.query_dim,), peer.query_norm.weight, peer.query_norm.bias, peer.query_norm.eps
                )
            half = peer.query_dim // 2
            s0 = peer.sub_keys_0[h] @ q[:half]
            s1 = peer.sub_keys_1[h] @ q[half:]
            full = torch.stack([s0[e // n1] + s1[e % n1] for e in range(peer.num_experts)])
            top, experts = full.topk(peer.top_k)
            w = top.softmax(-1)
            for j, e in enumerate(experts.tolist()):
                down = peer.down_embed.weight[e].view(eh, hidden)
                up = peer.up_embed.weight[e].view(eh, hidden)
                out = out + w[j] * (F.gelu(down @ xt) @ up)
        rows.append(out)
    return torch.stack(rows).view_as(x)


def all_grads(module: torch.nn.Module, x: torch.Tensor, fn) -> dict[str, torch.Tensor]:
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    (fn(x) * probe).sum().backward()
    out = {name: p.grad.clone() for name, p in module.named_parameters()}
    out["input"] = x.grad.clone()
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"peer_expert_hidden_size": 3, "peer_batch_norm_query": False},
        {"peer_num_heads": 1, "peer_num_experts_per_tok": 1},
    ],
)
def test_forward_and_grads_match_brute_force_reference(overrides):
    peer = make_peer(**overrides)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(peer(x), reference_forward(peer, x), atol=1e-5, rtol=1e-5)
    fast = all_grads(peer, x, peer)
    slow = all_grads(peer, x, lambda inp: reference_forward(peer, inp))
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-5, msg=name)


def test_sub_keys_receive_gradients():
    peer = make_peer()
    peer(torch.randn(2, 6, 16)).pow(2).sum().backward()
    for keys in (peer.sub_keys_0, peer.sub_keys_1):
        assert keys.grad is not None and keys.grad.abs().sum() > 0
    assert peer.query_proj.weight.grad.abs().sum() > 0


def test_keys_learn_to_prefer_a_rewarded_expert():
    """An SGD step on the keys alone raises the score of a selected expert whose output is rewarded."""
    peer = make_peer(peer_num_heads=1)
    x = torch.randn(1, 1, 16)
    scores, idx = peer.retrieve(x.view(1, 16))
    target = idx[0, 0, -1].item()  # the weakest of the selected experts
    with torch.no_grad():
        peer.up_embed.weight.zero_()
        peer.up_embed.weight[target] = 1.0
        peer.down_embed.weight[target] = x.view(16)  # positive activation for this token
    opt = torch.optim.SGD([peer.sub_keys_0, peer.sub_keys_1], lr=0.5)
    peer(x).sum().neg().backward()  # maximise the output, i.e. the weight of the target expert
    opt.step()
    new_scores, new_idx = peer.retrieve(x.view(1, 16))
    position = (new_idx[0, 0] == target).nonzero()
    assert position.numel() == 1
    gap_before = scores[0, 0, 0] - scores[0, 0, -1]
    gap_after = new_scores[0, 0, 0] - new_scores[0, 0, position.item()]
    assert gap_after < gap_before


def test_usage_counts_and_hot_experts():
    peer = make_peer()
    x = torch.randn(3, 4, 16)
    peer.train()
    with torch.no_grad():
        peer(x)
        _, idx = peer.retrieve(x.view(-1, 16))
    assert peer.usage_counts.sum().item() == 3 * 4 * peer.num_heads * peer.top_k
    assert torch.equal(peer.usage_counts, torch.bincount(idx.flatten(), minlength=64))
    peer.reset_usage()
    peer.eval()
    with torch.no_grad():
        peer(x)
    assert peer.usage_counts.sum() == 0  # eval: not tracked ...
    peer.track_usage = True
    with torch.no_grad():
        peer(x)
    assert peer.usage_counts.sum() > 0  # ... unless usage logging asks for it

    peer.usage_counts.zero_()
    peer.usage_counts[:4] = torch.tensor([40, 6, 5, 1])  # mean = 52 / 64 = 0.8125
    assert peer.hot_experts() == 3  # config threshold 5 -> > 4.06: 40, 6, 5
    assert peer.hot_experts(threshold=10.0) == 1  # > 8.125: only 40
    assert peer.hot_experts(threshold=1.0) == 4  # > 0.8125: all four used experts
    stats = peer.usage_stats()
    assert stats["active_fraction"] == pytest.approx(4 / 64)
    assert stats["max_over_mean"] == pytest.approx(40 / 0.8125)
    assert make_peer(peer_usage_threshold=1.0).usage_threshold == 1.0
    peer.reset_usage()
    assert peer.hot_experts() == 0
    assert "usage_counts" not in peer.state_dict()


def test_query_norm_on_off():
    with_norm, without_norm = make_peer(peer_batch_norm_query=True), make_peer(peer_batch_norm_query=False)
    assert isinstance(with_norm.query_norm, torch.nn.LayerNorm) and without_norm.query_norm is None
    without_norm.load_state_dict(with_norm.state_dict(), strict=False)
    x = torch.randn(2, 5, 16)
    assert not torch.allclose(with_norm(x), without_norm(x), atol=1e-4)
    # LayerNorm makes retrieval invariant to the scale of the query projection; without it, not.
    y_norm, y_raw = with_norm(x), without_norm(x)
    with torch.no_grad():
        with_norm.query_proj.weight.mul_(10.0)
        without_norm.query_proj.weight.mul_(10.0)
    torch.testing.assert_close(with_norm(x), y_norm, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(without_norm(x), y_raw, atol=1e-4)


def test_heads_sum_and_top_k_shapes():
    x = torch.randn(2, 3, 16)
    two = make_peer(peer_num_heads=2)
    scores, idx = two.retrieve(x.view(-1, 16))
    assert scores.shape == idx.shape == (6, 2, 3)
    assert (scores[..., :-1] >= scores[..., 1:]).all()  # best first
    # two heads = sum of two one-head layers holding each head's query rows and keys (experts shared)
    total = torch.zeros_like(x)
    for h in range(2):
        one = make_peer(peer_num_heads=1)
        with torch.no_grad():
            one.query_proj.weight.copy_(two.query_proj.weight[h * 8 : (h + 1) * 8])
            one.sub_keys_0.copy_(two.sub_keys_0[h : h + 1])
            one.sub_keys_1.copy_(two.sub_keys_1[h : h + 1])
            one.down_embed.weight.copy_(two.down_embed.weight)
            one.up_embed.weight.copy_(two.up_embed.weight)
        total = total + one(x)
    torch.testing.assert_close(two(x), total, atol=1e-5, rtol=1e-5)

    k5 = make_peer(peer_num_experts_per_tok=5)
    k5.load_state_dict(two.state_dict())
    s5, i5 = k5.retrieve(x.view(-1, 16))
    assert i5.shape == (6, 2, 5)
    assert torch.equal(i5[..., :3], idx)  # top-3 is a prefix of top-5
    assert not torch.allclose(k5(x), two(x), atol=1e-4)


def test_expert_hidden_size_sets_table_width():
    peer = make_peer(peer_expert_hidden_size=4)
    assert peer.down_embed.weight.shape == (64, 16 * 4) and peer.up_embed.weight.shape == (64, 16 * 4)
    assert peer(torch.randn(1, 2, 16)).shape == (1, 2, 16)


def test_reset_parameters_redraws_keys_only():
    peer = make_peer()
    tables = peer.down_embed.weight.clone(), peer.up_embed.weight.clone()
    keys = peer.sub_keys_0.clone()
    peer.reset_parameters()
    assert torch.equal(peer.down_embed.weight, tables[0]) and torch.equal(peer.up_embed.weight, tables[1])
    assert not torch.equal(peer.sub_keys_0, keys)
    assert peer.sub_keys_0.std().item() == pytest.approx(0.02, rel=0.3)  # initializer_range


def test_bf16_forward_keeps_dtype():
    peer = make_peer().to(torch.bfloat16)
    y = peer(torch.randn(2, 3, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
