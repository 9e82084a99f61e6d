"""ONNX export via ``torch.onnx``: (input_ids, attention_mask) -> logits, dynamic batch and sequence.

The exported graph is a logits-only wrapper around a copy of the model, made traceable without
changing its math:

* the padding mask is always applied (``XoronModel.forward`` skips it when every position is
  real -- a data-dependent branch an exporter would freeze); with an all-ones mask both give the
  same attention;
* chunked ("ring") attention is switched to full attention (same result; its Python loop over
  query blocks depends on the sequence length);
* MoE experts run densely: every expert on every token, combined with the router's top-k weights
  scattered into an (tokens x experts) matrix -- the same sum as the sorted dispatch, whose
  per-expert slice sizes are data-dependent.

:func:`verify_onnx` runs the file under onnxruntime against our model (max abs logit diff for
each batch/sequence shape). :func:`quantize_int8` writes onnxruntime's dynamically quantised
int8 variant; :func:`accuracy_loss` measures it against the fp32 graph on held-out tokens (top-1
agreement, mean KL(fp32 || int8), max abs diff). Reports go to a JSON next to the files.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xoron_pipelines import kernels
from xoron_pipelines.atomic import atomic_file
from xoron_pipelines.model.moe import Experts, Router

logger = logging.getLogger(__name__)


def _dense_experts_forward(
    self: Experts, hidden: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Every expert on every token, weighted by the (N, E) scatter of the top-k weights."""
    combine = hidden.new_zeros(hidden.shape[0], self.num_experts).scatter_add(1, indices, weights.to(hidden.dtype))
    gate, up = torch.einsum("nh,eih->eni", hidden, self.gate_up_proj).chunk(2, dim=-1)
    out = torch.einsum("eni,ehi->enh", kernels.swiglu(gate, up, impl=self.impl), self.down_proj)
    return torch.einsum("enh,ne->nh", out, combine)


def _topk_router_forward(self: Router, hidden: torch.Tensor):
    """``Router.forward`` with ``torch.topk`` for the selection (the kernel's stable sort has no
    ONNX lowering); selection by scores + bias, weights from the unbiased scores."""
    scores = self.scores(hidden)
    indices = torch.topk(scores + self.e_score_correction_bias, self.top_k, dim=-1).indices
    weights = scores.gather(-1, indices)
    if self.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return scores, weights * self.routed_scaling_factor, indices


class LogitsWrapper(nn.Module):
    """(input_ids, attention_mask) -> logits of an export-friendly copy of ``model``."""

    def __init__(self, model) -> None:
        super().__init__()
        self.lm = copy.deepcopy(model).float().eval()
        self.lm.config.attention_chunk_size = None
        for module in self.lm.modules():
            if isinstance(module, Experts):
                module.forward = types.MethodType(_dense_experts_forward, module)
            elif isinstance(module, Router):
                module.forward = types.MethodType(_topk_router_forward, module)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = self.lm.model
        hidden = base.embed_tokens(input_ids)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        key_valid = attention_mask.bool()
        rotary = None
        if base.rotary_emb is not None:
            rotary = base.rotary_emb(positions, hidden.dtype)
        else:
            hidden = hidden + base.embed_positions(positions)
        for layer in base.layers:
            hidden = layer(hidden, rotary, key_valid)
        return self.lm.lm_head(base.norm(hidden))


def _example(vocab: int, batch: int = 2, seq: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded row
    return ids, mask


def export_onnx(model, path: str | os.PathLike, opset: int = 18) -> Path:
    """Export ``model`` to ONNX at ``path`` (atomic), batch and sequence axes dynamic."""
    wrapper = LogitsWrapper(model).eval()  # a new module starts in training mode
    ids, mask = _example(model.config.vocab_size)
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2)
    path = Path(path)
    with atomic_file(path) as tmp, torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (ids, mask),
            dynamo=True,
            opset_version=opset,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            external_data=False,
            optimize=True,
            verify=False,
            report=False,
        )
        program.save(str(tmp), external_data=False)
    logger.info("wrote ONNX (opset %d) to %s", opset, path)
    return path


def _session(path: str | os.PathLike):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Logits (B, T, V) from an onnxruntime session."""
    return session.run(
        ["logits"], {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
    )[0]


@torch.no_grad()
def reference_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Our model's logits (fp32) for the same inputs, computed on the model's device."""
    model = model.eval()
    device = next(model.parameters()).device
    return model(ids.to(device), attention_mask=mask.to(device)).logits.float().cpu().numpy()


def verify_onnx(
    model,
    path: str | os.PathLike,
    shapes=((1, 7), (3, 7), (1, 19), (3, 19)),
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Max abs logit difference between the ONNX graph (onnxruntime, CPU) and ``model`` (run on
    ``device``, fp32; moved back where it was afterwards) for each (batch, seq) shape; batch > 1
    rows are left-padded by different amounts."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        return _verify(model, path, shapes)
    finally:
        model.to(home)


def _verify(model, path, shapes) -> dict[str, Any]:
    session = _session(path)
    gen = torch.Generator().manual_seed(1)
    diffs = {}
    for batch, seq in shapes:
        ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
        mask = torch.ones(batch, seq, dtype=torch.long)
        for row in range(1, batch):
            mask[row, : row * 2] = 0
        diffs[f"{batch}x{seq}"] = float(np.abs(run_onnx(session, ids, mask) - reference_logits(model, ids, mask)).max())
    return {"max_abs_diff": max(diffs.values()), "per_shape": diffs}


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """onnxruntime dynamic quantisation: int8 weights, activations quantised at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    graph = onnx.load(str(src))
    del graph.graph.value_info[:]  # let the quantiser re-infer intermediate shapes from scratch
    with atomic_file(dst.with_suffix(".src.onnx")) as plain, atomic_file(dst) as tmp:
        onnx.save(graph, str(plain))
        quantize_dynamic(str(plain), str(tmp), weight_type=QuantType.QInt8)
    dst.with_suffix(".src.onnx").unlink(missing_ok=True)
    return dst


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def accuracy_loss(fp32_path, int8_path, token_ids: torch.Tensor) -> dict[str, float]:
    """int8 vs fp32 on held-out ``token_ids`` (B, T): top-1 agreement, mean KL(fp32||int8) per
    token (nats), max abs logit diff, and next-token accuracy of each (how often the argmax is
    the actual next token)."""
    mask = torch.ones_like(token_ids)
    ref_logits = run_onnx(_session(fp32_path), token_ids, mask).astype(np.float64)
    q_logits = run_onnx(_session(int8_path), token_ids, mask).astype(np.float64)
    ref, q = _log_softmax(ref_logits), _log_softmax(q_logits)
    kl = (np.exp(ref) * (ref - q)).sum(-1)
    targets = token_ids[:, 1:].numpy()
    top_ref, top_q = ref.argmax(-1), q.argmax(-1)
    return {
        "top1_agreement": float((top_ref == top_q).mean()),
        "mean_kl": float(kl.mean()),
        "max_abs_logit_diff": float(np.abs(ref_logits - q_logits).max()),
        "next_token_acc_fp32": float((top_ref[:, :-1] == targets).mean()),
        "next_token_acc_int8": float((top_q[:, :-1] == targets).mean()),
        "tokens": int(token_ids.numel()),
    }


def export_onnx_all(
    model,
    out_dir: str | os.PathLike,
    eval_ids: torch.Tensor,
    opset: int = 18,
    int8: bool = True,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """model.onnx (+ model.int8.onnx) and report.json with the parity and int8 figures; the
    graph is traced on the CPU, the parity reference runs on ``device`` (the export's ``device``)."""
    out_dir = Path(out_dir)
    fp32 = export_onnx(model, out_dir / "model.onnx", opset)
    parity = verify_onnx(model, fp32, device=device)
    report: dict[str, Any] = {"opset": opset, "device": str(device), "fp32": {"file": fp32.name, **parity}}
    if int8:
        q = quantize_int8(fp32, out_dir / "model.int8.onnx")
        report["int8"] = {"file": q.name, "bytes": q.stat().st_size, **accuracy_loss(fp32, q, eval_ids)}
    report["fp32"]["bytes"] = fp32.stat().st_size
    with atomic_file(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


__all__ = [
    "LogitsWrapper",
    "accuracy_loss",
    "export_onnx",
    "export_onnx_all",
    "quantize_int8",
    "reference_logits",
    "run_onnx",
    "verify_onnx",
]
