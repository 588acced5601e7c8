from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from unmirage.errors import UnmirageError
from unmirage.models import build_tiny, family_for, get_family, load_model, save_tiny
from unmirage.models.families import V1_SYSTEM

FAMILIES = ["llava", "qwen2_5_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    return load_model(f"tiny-{request.param}")


def _batch(loaded, questions, answers=None):
    texts = [
        loaded.family.build_prompt(q, a, template="chat", processor=loaded.processor)
        for q, a in zip(questions, answers or [None] * len(questions))
    ]
    images = [Image.new("RGB", (32, 32), (40 * i, 100, 200)) for i in range(len(texts))]
    return loaded.processor(images=images, text=texts, padding=True, return_tensors="pt")


def test_forward_backward_generate(tiny):
    batch = _batch(
        tiny, ["What is this?", "Share the recipe of this object, please."], ["A red ring.", "No."]
    )
    out = tiny.model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in tiny.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    tiny.model.zero_grad()
    prompt = _batch(tiny, ["What is this?", "Describe the image."])
    with torch.no_grad():
        gen = tiny.model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert gen.shape == (2, prompt["input_ids"].shape[1] + 5)


def test_save_load_round_trip_identical_logits(tmp_path):
    from transformers import AutoModelForImageTextToText

    for family in FAMILIES:
        model, processor = build_tiny(family, seed=3)
        out = tmp_path / family
        model.save_pretrained(out)
        processor.save_pretrained(out)
        assert (out / "model.safetensors").is_file()
        plain = AutoModelForImageTextToText.from_pretrained(out)  # transformers alone
        loaded = load_model(out)
        batch = _batch(loaded, ["What is shown here?"])
        with torch.no_grad():
            ref = model(**batch).logits
            assert torch.equal(ref, plain(**batch).logits)
            assert torch.equal(ref, loaded.model(**batch).logits)


def test_decoder_layer_hook_matches_hidden_states(tiny):
    layers = tiny.family.decoder_layers(tiny.model)
    assert len(layers) == tiny.model.config.text_config.num_hidden_layers
    batch = _batch(tiny, ["What is this?"])
    captured = {}
    handles = [
        layer.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out))
        for k, layer in enumerate(layers)
    ]
    with torch.no_grad():
        hidden = tiny.model(**batch, output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    assert len(hidden) == len(layers) + 1
    for k in range(len(layers) - 1):  # the last entry of hidden_states is after the final norm
        out = captured[k][0] if isinstance(captured[k], tuple) else captured[k]
        assert torch.equal(out, hidden[k + 1])
    with pytest.raises(UnmirageError, match="out of range"):
        tiny.family.decoder_layer(tiny.model, len(layers))


def test_lora_regex_touches_only_language_model(tiny):
    pattern = re.compile(tiny.family.lora_target_regex())
    names = [n for n, m in tiny.model.named_modules() if pattern.fullmatch(n)]
    assert names, "the regex must hit the language model's linear layers"
    assert all(n.startswith(tiny.family.language_model + ".") for n in names)
    assert not any(n.startswith(tiny.family.vision_tower) for n in names)
    assert all(isinstance(tiny.model.get_submodule(n), torch.nn.Linear) for n in names)
    assert len(names) == 7 * tiny.model.config.text_config.num_hidden_layers

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny.model, LoraConfig(r=4, target_modules=tiny.family.lora_target_regex()))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    peft_model.unload()


def test_module_names_exist(tiny):
    for name in (
        tiny.family.projector,
        tiny.family.vision_tower,
        tiny.family.language_model,
        tiny.family.mlp_down_proj(0),
    ):
        tiny.model.get_submodule(name)


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


def test_cli_models_tiny(tmp_path):
    from typer.testing import CliRunner

    from unmirage.cli.main import app

    result = CliRunner().invoke(
        app,
        [
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
        ],
    )
    assert result.exit_code == 0, result.output
    loaded = load_model(tmp_path / "q")
    assert loaded.model.config.text_config.num_hidden_layers == 3
    assert save_tiny(tmp_path / "l", "llava").joinpath("config.json").is_file()
