"""Contract of every registered model family: a new family file is tested here without writing a test.

Families with a tiny model (`tiny_tokenizer` set) are built and checked end to end: the adapter is found from
the model, its module names exist, the decoder-layer hook matches `hidden_states`, the LoRA regex hits only
the language model, prompts end with the training answer, image tokens are where the adapter says, the
model trains and generates, and it saves and reloads with identical logits."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from unmirage.errors import UnmirageError
from unmirage.models import FAMILIES, build_tiny, family_for, load_model, tiny_families
from unmirage.models.families import family_class
from unmirage.models.tiny import TinySpec


def _batch(loaded, questions, answers=None):
    texts = [
        loaded.family.build_prompt(q, a, template="chat", processor=loaded.processor)
        for q, a in zip(questions, answers or [None] * len(questions))
    ]
    images = [Image.new("RGB", (32, 32), (40 * i, 100, 200)) for i in range(len(texts))]
    return loaded.processor(images=images, text=texts, padding=True, return_tensors="pt")


@pytest.fixture(scope="module", params=tiny_families())
def tiny(request):
    return load_model(f"tiny-{request.param}")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_registered_consistently(name):
    cls = FAMILIES[name]
    assert cls.name == name
    for model_type in cls.model_types:
        assert family_class(model_type) is cls
    if not cls.multimodal:
        assert cls.projector is None and cls.vision_tower is None
    if cls.tiny_tokenizer is not None:
        assert cls.multimodal, "tiny models are vision-language models (load_model's tiny-* names)"
        assert cls.model_types, "a tiny model must be found again from its config's model_type"
        named = {v for v in cls.tiny_tokenizer.tokens.values() if isinstance(v, str)}
        assert named <= set(cls.tiny_tokenizer.special), "bos/eos/unk/pad must be trained special tokens"
    else:
        with pytest.raises(UnmirageError, match="unknown tiny family"):
            TinySpec(family=name).validate()


def test_adapter_is_found_from_the_model_and_sizes_are_honoured(tiny):
    assert type(family_for(tiny.model)) is type(tiny.family)
    assert tiny.family.multimodal and tiny.multimodal
    assert tiny.family.hidden_size(tiny.model) == TinySpec().hidden
    assert tiny.family.num_layers(tiny.model) == TinySpec().layers
    model, _ = build_tiny(tiny.family.name, layers=3, hidden=32, heads=1)
    assert tiny.family.num_layers(model) == 3 and tiny.family.hidden_size(model) == 32


def test_module_names_point_at_the_right_modules(tiny):
    family, model = tiny.family, tiny.model
    down = model.get_submodule(family.mlp_down_proj(0))
    assert isinstance(down, torch.nn.Linear) and down.out_features == family.hidden_size(model)
    assert family.decoder_layers(model) is model.get_submodule(family.language_model).layers

    def parameters(module: str) -> set[str]:
        return {f"{module}.{n}" for n, _ in model.get_submodule(module).named_parameters()}

    projector, vision = parameters(family.projector), parameters(family.vision_tower)
    language = parameters(family.language_model)
    assert projector and vision and language
    assert not (projector | vision) & language, "projector and vision tower lie outside the language model"


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


def test_prompts_end_with_the_answer_and_mark_the_image(tiny):
    for template in ("v1", "chat"):
        full = tiny.family.build_prompt("Q?", "A.", template=template, processor=tiny.processor)
        prompt = tiny.family.build_prompt("Q?", template=template, processor=tiny.processor)
        answer = tiny.family.answer_text("A.", template=template, processor=tiny.processor)
        assert full == prompt + answer and "A." in answer
    assert tiny.family.image_placeholder in tiny.family.build_prompt("Q?", template="v1")
    batch = _batch(tiny, ["What is this?"])
    image = tiny.family.image_mask(batch["input_ids"], tiny.model)
    assert image.sum() > 0
    text_only = tiny.processor.tokenizer("What is this?", return_tensors="pt")["input_ids"]
    assert not tiny.family.image_mask(text_only, tiny.model).any()


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
    assert len(names) == len(tiny.family.lm_linear) * tiny.model.config.text_config.num_hidden_layers

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny.model, LoraConfig(r=4, target_modules=tiny.family.lora_target_regex()))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    peft_model.unload()


@pytest.mark.parametrize("family", tiny_families())
def test_save_load_round_trip_identical_logits(tmp_path, family):
    from transformers import AutoModelForImageTextToText

    model, processor = build_tiny(family, seed=3)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    plain = AutoModelForImageTextToText.from_pretrained(tmp_path)  # transformers alone
    loaded = load_model(tmp_path)
    assert type(loaded.family) is FAMILIES[family]
    batch = _batch(loaded, ["What is shown here?"])
    with torch.no_grad():
        ref = model(**batch).logits
        assert torch.equal(ref, plain(**batch).logits)
        assert torch.equal(ref, loaded.model(**batch).logits)
