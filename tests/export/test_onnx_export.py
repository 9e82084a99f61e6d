"""ONNX export: logits within 1e-4 of ours under onnxruntime for dynamic batch/sequence; int8 figures."""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch

from tests.export.export_helpers import make_model
from xoron_pipelines.export.onnx_export import export_onnx_all, reference_logits, run_onnx


def test_onnx_parity_dynamic_axes_and_int8_report(tokenizer, tmp_path):
    # MoE (dense dispatch in the graph) + GQA + chunked attention + a dense layer, 2 layers
    model = make_model("nano-gqa-moe", tokenizer, num_layers=2, sliding_window=None)
    held_out = torch.randint(0, 512, (4, 24), generator=torch.Generator().manual_seed(7))
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_onnx_all(model, tmp_path, held_out, opset=18, int8=True)
    assert not [w for w in caught if "training mode" in str(w.message)]  # exported in eval mode
    graph = onnx.load(tmp_path / "model.onnx")
    for value in graph.graph.input:  # batch and sequence are symbolic, not fixed
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, True], value.name

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(3)
    for batch, seq in ((1, 5), (3, 5), (1, 13), (3, 13)):
        ids = torch.randint(0, 512, (batch, seq), generator=gen)
        mask = torch.ones_like(ids)
        mask[batch - 1, : min(3, seq - 1)] = 0 if batch > 1 else 1  # a left-padded row in the batch
        got, want = run_onnx(session, ids, mask), reference_logits(model, ids, mask)
        assert got.shape == (batch, seq, 512)
        assert np.abs(got - want).max() < 1e-4, (batch, seq)
    assert report["fp32"]["max_abs_diff"] < 1e-4 and set(report["fp32"]["per_shape"]) == {"1x7", "3x7", "1x19", "3x19"}
    int8 = report["int8"]
    assert (tmp_path / "model.int8.onnx").stat().st_size < 0.6 * (tmp_path / "model.onnx").stat().st_size
    assert 0.5 <= int8["top1_agreement"] <= 1.0 and 0.0 < int8["mean_kl"] < 0.5 and int8["max_abs_logit_diff"] > 0
    assert int8["tokens"] == held_out.numel()
    assert json.loads((tmp_path / "report.json").read_text()) == report
