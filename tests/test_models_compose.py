"""LLaVA-class composition (`unmirage.models.compose`, `unmirage models compose`) on a tiny stand-in for SmolLM2
(ChatML, tied embeddings); a composed VLM needs images where a text-only model does not."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import CHATML, cli_status, stand_in_smollm2
from unmirage.data.collate import IGNORE_INDEX, Collator
from unmirage.data.conversations import Example
from unmirage.errors import UnmirageError
from unmirage.models import get_family, load_model
from unmirage.models.compose import IMAGE_TOKEN, VisionSpec, compose_vlm, text_fidelity
from unmirage.models.tiny import build_tokenizer
from unmirage.placeholder import placeholder_image, placeholder_size


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    model, tok = stand_in_smollm2()
    out = tmp_path_factory.mktemp("lm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vlm_dir(lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm") / "composed"
    argv = ["models", "compose", "--language-model", str(lm_dir), "--out", str(out), "--vision-hidden", "32"]
    assert cli_status(argv) == 0
    return out


def test_composed_model_loads_everywhere_and_keeps_the_lm(lm_dir, vlm_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    lm = load_model(lm_dir)
    vlm = load_model(vlm_dir)
    assert vlm.family.name == "llava" and vlm.multimodal
    assert vlm.model.config.model_type == "llava"
    assert type(AutoProcessor.from_pretrained(vlm_dir)).__name__ == "LlavaProcessor"
    plain = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    # tied embeddings survive the save/load round trip
    assert plain.lm_head.weight.data_ptr() == plain.model.language_model.embed_tokens.weight.data_ptr()
    # without an image the composed model is exactly the LM (one extra vocabulary row for <image>)
    ids = lm.tokenizer(["What is in the box?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = lm.model(input_ids=ids).logits
        for model in (vlm.model, plain):
            logits = model(input_ids=ids).logits
            assert logits.shape[-1] == ref.shape[-1] + 1
            torch.testing.assert_close(logits[..., :-1], ref)
    manifest = json.loads((vlm_dir / "manifest.json").read_text())
    assert manifest["image_tokens"] == 4 and "random" in manifest["vision_tower"]


def test_projector_starts_near_zero_and_image_token_is_never_generated(vlm_dir):
    vlm = load_model(vlm_dir)
    image_id = vlm.family.image_token_id(vlm.model)
    assert vlm.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == image_id
    pixels = vlm.processor.image_processor(
        [placeholder_image(placeholder_size(vlm.processor))], return_tensors="pt"
    )
    with torch.no_grad():
        features = vlm.model.model.get_image_features(pixel_values=pixels["pixel_values"])
    features = torch.cat(list(getattr(features, "pooler_output", features)))
    embeddings = vlm.model.get_input_embeddings().weight
    anchor = embeddings[vlm.tokenizer.convert_tokens_to_ids("<|im_start|>")]  # the stand-in's BOS
    assert (features - anchor).pow(2).mean().sqrt() < 0.05 * embeddings.pow(2).mean().sqrt()
    assert json.loads((vlm_dir / "manifest.json").read_text())["projector_anchor_token"] == "<|im_start|>"
    assert vlm.model.generation_config.suppress_tokens == [image_id]
    prompt = vlm.family.build_prompt("Describe it.", template="chat", processor=vlm.processor)
    batch = vlm.processor(
        images=[placeholder_image(placeholder_size(vlm.processor))], text=[prompt], return_tensors="pt"
    )
    assert int((batch["input_ids"] == image_id).sum()) == 4
    with torch.no_grad():
        out = vlm.model.generate(**batch, max_new_tokens=6)
    assert image_id not in out[0, batch["input_ids"].shape[1] :].tolist()


def test_chat_template_is_the_lms_with_the_image_in_the_user_turn(lm_dir, vlm_dir):
    lm = load_model(lm_dir)
    vlm = load_model(vlm_dir)
    question, answer = "How do I bake bread?", "Mix flour and water."
    expected_prompt = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert vlm.family.build_prompt(question, template="chat", processor=vlm.processor) == expected_prompt
    full = vlm.family.build_prompt(question, answer, template="chat", processor=vlm.processor)
    assert full == expected_prompt + answer + "<|im_end|>\n"
    # the text-only LM under its own template: the same turn structure without the image
    assert lm.family.build_prompt(question, answer, template="chat", processor=lm.processor).endswith(
        f"user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    )
    # the reference's v1 prompt keeps its </s> ending
    assert vlm.family.build_prompt(question, answer, template="v1").endswith(f"ASSISTANT: {answer}</s>")


def test_collator_labels_token_by_token_on_composed_model(vlm_dir):
    vlm = load_model(vlm_dir)
    examples = [
        Example(id="a", question="How do I bake bread?", answer="Mix flour and water, then bake."),
        Example(id="b", question="Share a recipe.", answer="I cannot help with that."),
    ]
    batch = Collator(vlm, template="chat", placeholder_images=True)(examples)
    tok = vlm.tokenizer
    image_id = vlm.family.image_token_id(vlm.model)
    for row, example in enumerate(examples):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        labelled = labels[labels != IGNORE_INDEX].tolist()
        assert labelled == tok(f"{example.answer}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert tok.decode(labelled) == f"{example.answer}<|im_end|>\n"
        assert int((ids == image_id).sum()) == 4
        assert (labels[ids == image_id] == IGNORE_INDEX).all()
    out = vlm.model(**batch)
    out.loss.backward()
    projector = vlm.model.get_submodule(vlm.family.projector)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in projector.parameters())


def test_text_fidelity_by_hand_when_each_token_predicts_the_next(lm_dir, vlm_dir):
    """Zero every attention and MLP output: the residual stream at a position is then its own token's
    embedding, so the next token depends on the current one only (logits = tied embeddings x norm(embedding))
    and greedy decoding and every number of the report follow by hand. The LM and its composed VLM (the
    same language weights) then decode the same tokens from the same last prompt token whatever the image,
    and differ only by the VLM's extra <image> row in the embeddings; with the VLM's final norm negated,
    its logits are the LM's negated (plus that row) and the two disagree."""
    lm, vlm = load_model(lm_dir), load_model(vlm_dir)
    for loaded in (lm, vlm):
        for layer in loaded.family.decoder_layers(loaded.model):
            torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
            torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    image_token = vlm.family.image_token_id(vlm.model)

    def logits(loaded, token: int) -> torch.Tensor:
        norm = loaded.model.get_submodule(loaded.family.language_model).norm
        embedding = loaded.model.get_input_embeddings().weight[token]
        return loaded.model.get_output_embeddings()(norm(embedding)).double()

    def greedy(loaded, token: int, n: int) -> list[int]:
        answer = []
        for _ in range(n):
            row = logits(loaded, token)
            if loaded is vlm:  # the composed model never generates its image token
                row[image_token] = -torch.inf
            token = int(row.argmax())
            answer.append(token)
        return answer

    def by_hand(questions: list[str], n: int) -> dict[str, float]:
        identical, prefixes, kls, agree = 0, [], [], 0
        for question in questions:
            prompt = lm.family.build_prompt(question, template="chat", processor=lm.tokenizer)
            last = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"][-1]
            a, b = greedy(lm, last, n), greedy(vlm, last, n)
            identical += a == b
            prefixes.append(next((i for i in range(n) if a[i] != b[i]), n))
            kl = 0.0
            for token in [last, *a[:-1]]:  # the positions that predict the LM's answer tokens
                p = torch.log_softmax(logits(lm, token), -1)
                q = torch.log_softmax(logits(vlm, token), -1)[: p.shape[-1]]
                kl += float((p.exp() * (p - q)).sum())
                agree += int(p.argmax() == q.argmax())
            kls.append(kl / n)
        count = len(questions)
        return {
            "greedy_identical": identical / count,
            "mean_common_prefix": sum(prefixes) / count,
            "mean_kl": sum(kls) / count,
            "top1_agreement": agree / (n * count),
        }

    questions, n = ["What is it?", "Tell me more."], 4
    with torch.no_grad():
        same = text_fidelity(lm, vlm, questions, max_new_tokens=n)
        expected = by_hand(questions, n)
        assert (same.prompts, same.new_tokens, len(same.examples)) == (2, n, 2)
        assert (same.greedy_identical, same.mean_common_prefix, same.top1_agreement) == (1.0, 4.0, 1.0)
        assert expected["mean_kl"] > 1e-4  # the <image> row's share of each softmax
        assert same.mean_kl == pytest.approx(expected["mean_kl"], abs=2e-6)  # float32 inside text_fidelity
        assert [e["lm"] for e in same.examples] == [e["vlm"] for e in same.examples]

        vlm.model.get_submodule(vlm.family.language_model).norm.weight.mul_(-1)
        apart = text_fidelity(lm, vlm, questions, max_new_tokens=n)
        expected = by_hand(questions, n)
        assert expected["greedy_identical"] < 1 and expected["top1_agreement"] < 1
        for key, value in expected.items():
            assert getattr(apart, key) == pytest.approx(value, abs=1e-5), key


def test_end_of_turn_follows_the_chat_template():
    tok = build_tokenizer("llava")
    # llava-hf's LLaVA-1.5 template closes the assistant turn with a space; the model was trained on </s>
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'].upper() + ': ' }}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ c['text'] + ' ' }}{% endif %}"
        "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    )
    llava = get_family("llava")
    assert llava.chat_turn_affixes(tok) == (" ", "</s>")
    assert (
        llava.build_prompt("Q?", "A.", template="chat", processor=tok)
        == "USER: <image>\nQ? ASSISTANT: A.</s>"
    )
    chatml = build_tokenizer("qwen2_5_vl")
    chatml.chat_template = CHATML
    assert get_family("causal").chat_turn_affixes(chatml) == ("", "<|im_end|>\n")
    chatml.chat_template = None
    assert get_family("causal").answer_text("A.", template="chat", processor=chatml) == "A.<|im_end|>"


def test_compose_errors(lm_dir, vlm_dir, tmp_path):
    with pytest.raises(UnmirageError, match="not empty"):
        compose_vlm(lm_dir, vlm_dir)
    with pytest.raises(UnmirageError, match="already a llava VLM"):
        compose_vlm(vlm_dir, tmp_path / "x")
    with pytest.raises(UnmirageError, match="multiple of patch_size"):
        compose_vlm(lm_dir, tmp_path / "y", vision_spec=VisionSpec(image_size=30))
    with pytest.raises(UnmirageError, match="not a token of the language model"):
        compose_vlm(lm_dir, tmp_path / "w", projector_bias="<no such token>")
    with pytest.raises(UnmirageError, match="CLIP model folder"):
        compose_vlm(lm_dir, tmp_path / "z", vision=str(tmp_path / "missing"))
    assert not any((tmp_path / name).exists() for name in "xyzw")


def test_compose_with_a_clip_vision_folder(lm_dir, tmp_path):
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(1)
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=24,
            patch_size=8,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}).save_pretrained(
        tmp_path / "clip"
    )
    out = compose_vlm(
        lm_dir, tmp_path / "vlm", vision=str(tmp_path / "clip"), projector_std=0.0, projector_bias="zero"
    )
    vlm = load_model(out)
    assert torch.equal(
        vlm.model.model.vision_tower.embeddings.patch_embedding.weight,
        clip.embeddings.patch_embedding.weight,
    )
    projector = vlm.model.get_submodule(vlm.family.projector)
    assert (
        float(projector.linear_2.weight.detach().abs().max())
        == float(projector.linear_2.bias.abs().max())
        == 0.0
    )
    batch = Collator(vlm, template="chat", placeholder_images=True)(
        [Example(id="a", question="Q", answer="A")]
    )
    assert int((batch["input_ids"] == vlm.family.image_token_id(vlm.model)).sum()) == 9


# ----- text-only models -----------------------------------------------------------------------------------
def test_text_only_models_need_no_images(lm_dir, vlm_dir):
    from unmirage.eval import EvalPrompt, EvalSettings, check_images
    from unmirage.models.load import source_is_multimodal

    assert not source_is_multimodal(lm_dir)
    assert source_is_multimodal(vlm_dir) and source_is_multimodal("tiny-llava")
    prompts = [EvalPrompt(case="safe_normal", id="1", question="Q", image="a.png")]
    check_images(EvalSettings(model=str(lm_dir), vlguard_test="t.json"), prompts, None)
    with pytest.raises(UnmirageError, match="give image_root"):
        check_images(EvalSettings(model=str(vlm_dir), vlguard_test="t.json"), prompts, None)
