"""GGUF export: read every tensor and key back with gguf's reader; run with llama.cpp if installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType, GGUFReader, TokenType
from gguf.quants import dequantize

from tests.export.export_helpers import DOC_PROMPT, DOC_REST, make_model
from xoron_pipelines.export.gguf_export import export_gguf
from xoron_pipelines.export.tokenizer import END_OF_TURN, export_tokenizer, stop_ids

T = MODEL_TENSOR
# llama.cpp's loaders (src/models/{llama,deepseek2,glm4-moe}.cpp) per layer kind
LLAMA_BLOCK = [T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.FFN_NORM, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN]
MLA_ATTN = [
    T.ATTN_NORM,
    T.ATTN_Q_A,
    T.ATTN_Q_A_NORM,
    T.ATTN_Q_B,
    T.ATTN_KV_A_MQA,
    T.ATTN_KV_A_NORM,
    T.ATTN_K_B,
    T.ATTN_V_B,
    T.ATTN_OUT,
    T.FFN_NORM,
]
GQA_ATTN = [T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.ATTN_POST_NORM]
DENSE_FFN = [T.FFN_GATE, T.FFN_UP, T.FFN_DOWN]
MOE_FFN = [
    T.FFN_GATE_INP,
    T.FFN_GATE_EXP,
    T.FFN_UP_EXP,
    T.FFN_DOWN_EXP,
    T.FFN_GATE_SHEXP,
    T.FFN_UP_SHEXP,
    T.FFN_DOWN_SHEXP,
]

CASES = {
    # preset, overrides, arch, expected per-layer tensor kinds, whether lm_head is separate
    "dense": ("nano", {}, "llama", lambda i: LLAMA_BLOCK),
    "mla_moe": ("nano-moe-mla", {}, "deepseek2", lambda i: MLA_ATTN + (DENSE_FFN if i == 0 else MOE_FFN)),
    "gqa_moe": ("nano-gqa-moe", {"sliding_window": None}, "glm4moe", lambda i: GQA_ATTN + MOE_FFN),
}


def expected_names(kinds_of, n_layers: int, tied: bool, moe_layers) -> set[str]:
    names = {f"{TENSOR_NAMES[T.TOKEN_EMBD]}.weight", f"{TENSOR_NAMES[T.OUTPUT_NORM]}.weight"}
    if not tied:
        names.add(f"{TENSOR_NAMES[T.OUTPUT]}.weight")
    for i in range(n_layers):
        names |= {TENSOR_NAMES[k].format(bid=i) + ".weight" for k in kinds_of(i)}
        if i in moe_layers:
            names.add(TENSOR_NAMES[T.FFN_EXP_PROBS_B].format(bid=i) + ".bias")
    return names


def _fields(reader: GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def _tensor(reader: GGUFReader, name: str) -> np.ndarray:
    t = next(t for t in reader.tensors if t.name == name)
    data = np.asarray(t.data)
    if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return data.astype(np.float32)
    return dequantize(data, t.tensor_type).astype(np.float32)


def _interleave(w: torch.Tensor, blocks: int, offset: int, dim: int) -> torch.Tensor:
    """Test-side copy of llama.cpp's expectation: rotate-half rows -> interleaved pairs."""
    w = w.reshape(blocks, -1, w.shape[-1]).clone()
    part = w[:, offset : offset + dim]
    w[:, offset : offset + dim] = part.reshape(blocks, 2, dim // 2, -1).transpose(1, 2).reshape(blocks, dim, -1)
    return w.reshape(-1, w.shape[-1])


def reference_values(model, arch: str) -> dict[str, torch.Tensor]:
    """What llama.cpp expects for a few tensors of layer 1 (independent of the exporter)."""
    cfg, sd = model.config, model.state_dict()
    p = "model.layers.1."
    ref = {
        "token_embd.weight": sd["model.embed_tokens.weight"],
        "blk.1.attn_norm.weight": sd[p + "input_layernorm.weight"],
    }
    if arch == "llama":
        ref["blk.1.attn_q.weight"] = _interleave(sd[p + "self_attn.q_proj.weight"], cfg.num_heads, 0, cfg.attn_head_dim)
        ref["blk.1.attn_k.weight"] = _interleave(
            sd[p + "self_attn.k_proj.weight"], cfg.num_kv_heads, 0, cfg.attn_head_dim
        )
        ref["blk.1.ffn_down.weight"] = sd[p + "mlp.down_proj.weight"]
    if arch == "deepseek2":
        nope, rope = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
        ref["blk.1.attn_q_b.weight"] = _interleave(sd[p + "self_attn.q_b_proj.weight"], cfg.num_heads, nope, rope)
        ref["blk.1.attn_kv_a_mqa.weight"] = _interleave(
            sd[p + "self_attn.kv_a_proj_with_mqa.weight"], 1, cfg.kv_lora_rank, rope
        )
        kv_b = sd[p + "self_attn.kv_b_proj.weight"].view(cfg.num_heads, nope + cfg.v_head_dim, cfg.kv_lora_rank)
        ref["blk.1.attn_k_b.weight"] = kv_b[:, :nope].transpose(1, 2)
        ref["blk.1.attn_v_b.weight"] = kv_b[:, nope:]
        ref["blk.1.exp_probs_b.bias"] = sd[p + "mlp.gate.e_score_correction_bias"]
    if arch in ("deepseek2", "glm4moe"):
        inter = cfg.expert_intermediate_size
        moe_layer = 1 if arch == "deepseek2" else 2
        q = f"model.layers.{moe_layer}.mlp."
        ref[f"blk.{moe_layer}.ffn_up_exps.weight"] = sd[q + "experts.gate_up_proj"][:, inter:]
        ref[f"blk.{moe_layer}.ffn_gate_inp.weight"] = sd[q + "gate.weight"]
    if arch == "glm4moe":  # layer 1 is dense: zero routed experts, the MLP as (padded) shared expert
        mlp = sd[p + "mlp.down_proj.weight"]
        down = torch.zeros(cfg.hidden_size, max(cfg.intermediate_size, cfg.expert_intermediate_size))
        down[:, : mlp.shape[1]] = mlp
        ref["blk.1.ffn_down_shexp.weight"] = down
        ref["blk.1.ffn_gate_exps.weight"] = torch.zeros(cfg.num_experts, cfg.expert_intermediate_size, cfg.hidden_size)
        ref["blk.1.attn_k.weight"] = sd[p + "self_attn.k_proj.weight"]  # NEOX rope: no permutation
    return {k: v.float() for k, v in ref.items()}


def expected_keys(cfg, arch: str, tokenizer) -> dict:
    """Every key llama.cpp reads for ``arch``, with the value it must have."""
    keys = {
        "general.architecture": arch,
        "general.type": "model",
        "general.quantization_version": 2,
        f"{arch}.block_count": cfg.num_layers,
        f"{arch}.context_length": cfg.max_position_embeddings,
        f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.attention.head_count": cfg.num_heads,
        f"{arch}.vocab_size": cfg.vocab_size,
        f"{arch}.rope.freq_base": cfg.rope_theta,
        f"{arch}.attention.layer_norm_rms_epsilon": cfg.norm_eps,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
        "tokenizer.ggml.padding_token_id": tokenizer.pad_token_id,
        "tokenizer.ggml.unknown_token_id": tokenizer.unk_token_id,
        "tokenizer.ggml.add_bos_token": True,  # every training row starts with BOS
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.eot_token_id": tokenizer.convert_tokens_to_ids("<|/assistant|>"),  # end of a turn
        "tokenizer.chat_template": "{{- bos_token -}}\n" + tokenizer.chat_template,  # the HF export's
    }
    if arch == "deepseek2":
        keys.update(
            {
                f"{arch}.attention.head_count_kv": 1,
                f"{arch}.attention.q_lora_rank": cfg.q_lora_rank,
                f"{arch}.attention.kv_lora_rank": cfg.kv_lora_rank,
                f"{arch}.attention.key_length": cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                f"{arch}.attention.value_length": cfg.kv_lora_rank,
                f"{arch}.attention.key_length_mla": cfg.qk_nope_head_dim + cfg.qk_rope_head_dim,
                f"{arch}.attention.value_length_mla": cfg.v_head_dim,
                f"{arch}.rope.dimension_count": cfg.qk_rope_head_dim,
                f"{arch}.rope.scaling.type": "yarn",
                f"{arch}.rope.scaling.factor": 4.0,
                f"{arch}.rope.scaling.original_context_length": 64,
                f"{arch}.rope.scaling.yarn_beta_fast": 32.0,
                f"{arch}.rope.scaling.yarn_beta_slow": 1.0,
                f"{arch}.rope.scaling.yarn_log_multiplier": 0.1,
            }
        )
    else:
        keys.update(
            {
                f"{arch}.attention.head_count_kv": cfg.num_kv_heads,
                f"{arch}.attention.key_length": cfg.attn_head_dim,
                f"{arch}.attention.value_length": cfg.attn_head_dim,
                f"{arch}.rope.dimension_count": cfg.attn_head_dim,
            }
        )
    if arch == "glm4moe":
        keys.update({f"{arch}.rope.scaling.type": "linear", f"{arch}.rope.scaling.factor": 2.0})
    if arch != "llama":
        moe = [i for i in range(cfg.num_layers) if cfg.ffn_type(i) == "moe"]
        keys.update(
            {
                f"{arch}.leading_dense_block_count": moe[0],
                f"{arch}.expert_count": cfg.num_experts,
                f"{arch}.expert_used_count": cfg.num_experts_per_tok,
                f"{arch}.expert_feed_forward_length": cfg.expert_intermediate_size,
                f"{arch}.expert_shared_count": {"deepseek2": 1, "glm4moe": 4}[arch],
                f"{arch}.expert_group_count": 1,
                f"{arch}.expert_group_used_count": 1,
                f"{arch}.expert_weights_scale": cfg.routed_scaling_factor,
                f"{arch}.expert_weights_norm": cfg.norm_topk_prob,
                f"{arch}.expert_gating_func": 2 if cfg.router_scoring == "sigmoid" else 1,
            }
        )
    return keys


@pytest.mark.parametrize("case", sorted(CASES))
def test_gguf_read_back(case, tokenizer, tmp_path):
    preset, overrides, arch, kinds_of = CASES[case]
    model = make_model(preset, tokenizer, **overrides)
    cfg = model.config
    moe_layers = {i for i in range(cfg.num_layers) if cfg.ffn_type(i) == "moe" or (arch == "glm4moe")}
    want_names = expected_names(kinds_of, cfg.num_layers, cfg.tie_word_embeddings, moe_layers)
    refs = reference_values(model, arch)
    for qtype, ftype in (("f16", 1), ("q8_0", 7)):
        info = export_gguf(model, tmp_path / f"m-{qtype}.gguf", tokenizer, qtype)
        reader = GGUFReader(tmp_path / f"m-{qtype}.gguf")
        assert {t.name for t in reader.tensors} == want_names
        fields = _fields(reader)
        keys = {**expected_keys(cfg, arch, tokenizer), "general.file_type": ftype}
        meta = {
            "general.name",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "GGUF.version",
            "GGUF.tensor_count",
            "GGUF.kv_count",
        }
        assert set(fields) - meta == set(keys), set(fields) ^ (set(keys) | meta)
        for key, value in keys.items():
            got = fields[key]
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, (key, got, value)
        # tokenizer: every id's token, CONTROL exactly for the special tokens, the merges
        vocab = {i: t for t, i in tokenizer.get_vocab().items()}
        tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
        assert len(tokens) == cfg.vocab_size and tokens[: len(vocab)] == [vocab[i] for i in range(len(vocab))]
        special = set(tokenizer.all_special_ids)
        assert {i for i, t in enumerate(types) if t == TokenType.CONTROL} == special
        assert all(t == TokenType.UNUSED for t in types[len(vocab) :])
        merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
        assert fields["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
        # shapes (ggml order = reversed torch order) and values
        for t in reader.tensors:
            assert t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.Q8_0)
            if t.name.endswith("norm.weight") or t.name.endswith(".bias") or "ffn_gate_inp" in t.name:
                assert t.tensor_type == GGMLQuantizationType.F32, t.name
        for name, ref in refs.items():
            got = _tensor(reader, name).reshape(ref.shape)
            t = next(t for t in reader.tensors if t.name == name)
            assert list(t.shape) == list(reversed(ref.shape)), name
            if t.tensor_type == GGMLQuantizationType.Q8_0:
                bound = ref.abs().max().item() / 127 + 1e-6  # half a step of the coarsest block, + f16 scale
                assert np.abs(got - ref.numpy()).max() <= bound, name
            else:
                exact = ref.numpy().astype(t.tensor_type == GGMLQuantizationType.F16 and np.float16 or np.float32)
                np.testing.assert_array_equal(got, exact.astype(np.float32), err_msg=name)
        assert info["architecture"] == arch and info["tensors"] == len(want_names)
        _llama_cpp_greedy(model, tmp_path / f"m-{qtype}.gguf", qtype, tokenizer)


def _llama_cpp_greedy(model, path, qtype: str, tokenizer) -> None:
    """llama.cpp itself loads and runs the file: same tokenisation, logits close to ours at every
    prompt position (same argmax: all for f16, >= 80% for q8_0), f16 greedy tokens equal ours."""
    try:
        import llama_cpp
    except ImportError:
        return  # the reader checks above are the core path; running needs llama-cpp-python
    text = "<|user|>def add(x, y):\n    return x + y  # hello, world!"
    prompt = tokenizer.encode(text)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False, logits_all=True)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt  # same BPE + special tokens
    llm.eval(prompt)
    theirs = np.array(llm.scores[: len(prompt)])
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0].numpy()
    agree = (theirs.argmax(-1) == ours.argmax(-1)).mean()
    scale = np.abs(ours).max()
    if qtype == "f16":
        assert agree == 1.0 and np.abs(theirs - ours).max() < 0.03 * scale
    else:
        assert agree >= 0.8 and np.abs(theirs - ours).mean() < 0.05 * scale  # 8-bit weights and activations
    short = tokenizer.encode("def add(x, y):\n    return")
    want = model.generate(torch.tensor([short]), max_new_tokens=8, eos_token_id=-1)[0, len(short) :].tolist()
    got = [t for _, t in zip(range(8), llm.generate(short, top_k=1, temp=0.0, reset=True))]
    assert got == want if qtype == "f16" else got[0] == want[0]


def test_gguf_of_a_trained_model_adds_bos_and_stops_at_eos(trained, tokenizer, tmp_path):
    """The GGUF says what the HF export does (add BOS, stop at EOS and at the end of an assistant
    turn, the chat template that renders BOS), read back with gguf's reader; where
    llama-cpp-python is installed, llama.cpp tokenizes a prompt with the BOS and its greedy
    completion is ours, ending at EOS (a model trained to end there)."""
    model, exported = trained["nano"], export_tokenizer(tokenizer)
    path = tmp_path / "m-f16.gguf"
    export_gguf(model, path, tokenizer, "f16")
    fields = _fields(GGUFReader(path))
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.ggml.add_eos_token"] is False
    assert [fields[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "padding", "eot")] == [
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.convert_tokens_to_ids(END_OF_TURN),
    ]
    assert fields["tokenizer.chat_template"] == exported.chat_template
    try:
        import llama_cpp
    except ImportError:
        return  # the metadata above is the core path; running needs llama-cpp-python
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False)
    prompt = exported(DOC_PROMPT)["input_ids"]
    assert llm.tokenize(DOC_PROMPT.encode()) == prompt  # llama.cpp adds the BOS, as the metadata says
    ours = model.generate(torch.tensor([prompt]), eos_token_id=stop_ids(exported), max_new_tokens=24)[0].tolist()
    assert ours[-1] == tokenizer.eos_token_id
    out = llm.create_completion(DOC_PROMPT, max_tokens=24, temperature=0.0, top_k=1)["choices"][0]
    assert out["text"] == DOC_REST and out["finish_reason"] == "stop"  # stopped at EOS, not at max_tokens


def test_peer_to_gguf_fails_before_writing(tokenizer, tmp_path):
    model = make_model("nano-peer", tokenizer)
    with pytest.raises(ValueError, match="PEER"):
        export_gguf(model, tmp_path / "out" / "m.gguf", tokenizer)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_sliding_window_to_gguf_is_named(tokenizer, tmp_path):
    model = make_model("nano-gqa-moe", tokenizer)
    with pytest.raises(ValueError, match="sliding_window=32"):
        export_gguf(model, tmp_path / "m.gguf", tokenizer)
    assert list(tmp_path.iterdir()) == []


def test_failed_gguf_write_keeps_previous_file(tokenizer, tmp_path, monkeypatch):
    import gguf

    model = make_model("nano", tokenizer, num_layers=1)
    target = tmp_path / "m.gguf"
    export_gguf(model, target, tokenizer)
    before = target.read_bytes()

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(make_model("nano", tokenizer, seed=1, num_layers=1), target, tokenizer)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
