from __future__ import annotations

import pytest

from helpers import run_cli
from unmirage.errors import UnmirageError
from unmirage.models import build_tiny, family_for, get_family, load_model, save_tiny
from unmirage.models.families import V1_SYSTEM


def test_prompts_v1_and_chat():
    llava = get_family("llava")
    assert llava.build_prompt("Q?", template="v1") == f"{V1_SYSTEM} USER: <image>\nQ? ASSISTANT:"
    assert llava.build_prompt("Q?", "A.", template="v1").endswith("ASSISTANT: A.</s>")
    qwen = get_family("qwen2_5_vl")
    assert (
        qwen.build_prompt("Q?", template="v1", system="S")
        == "S USER: <|vision_start|><|image_pad|><|vision_end|>\nQ? ASSISTANT:"
    )
    with pytest.raises(UnmirageError, match="unknown prompt template"):
        llava.build_prompt("Q", template="alpaca")
    with pytest.raises(UnmirageError, match="unknown model family"):
        get_family("gpt5")


def test_family_for_text_only_and_tiny_errors():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
        )
    )
    family = family_for(model)
    assert family.name == "causal" and not family.multimodal
    assert len(family.decoder_layers(model)) == 2
    with pytest.raises(UnmirageError, match="divisible"):
        build_tiny("llava", hidden=30, heads=4)
    with pytest.raises(UnmirageError, match="unknown tiny family"):
        build_tiny("gpt")


def test_load_errors(tmp_path):
    with pytest.raises(UnmirageError, match="safetensors"):
        (tmp_path / "config.json").write_text("{}")
        load_model(tmp_path)
    with pytest.raises(UnmirageError, match="unknown dtype"):
        load_model("tiny-llava", dtype="int3")


def test_missing_local_model_folder_is_named(tmp_path):
    from unmirage.models.load import looks_like_local_path, source_is_multimodal

    assert (
        looks_like_local_path("runs/x/model") and looks_like_local_path("./m") and looks_like_local_path("/m")
    )
    assert not looks_like_local_path("llava-hf/llava-1.5-7b-hf") and not looks_like_local_path("gpt2")
    with pytest.raises(UnmirageError, match="model folder not found"):
        source_is_multimodal(str(tmp_path / "no" / "such" / "model"))


def test_cli_models_tiny(tmp_path, capsys):
    argv = [
        "models",
        "tiny",
        "--family",
        "qwen2_5_vl",
        "--out",
        str(tmp_path / "q"),
        "--layers",
        "3",
        "--hidden",
        "64",
    ]
    result = run_cli(argv, capsys)
    assert result.code == 0, result.err
    loaded = load_model(tmp_path / "q")
    assert loaded.model.config.text_config.num_hidden_layers == 3
    assert save_tiny(tmp_path / "l", "llava").joinpath("config.json").is_file()
