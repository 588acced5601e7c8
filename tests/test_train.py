"""The unlearning trainer on the tiny families: effects of NPO/RMU, exact parameter selection, references,
gradient accumulation, resume, outputs, and errors before any compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from helpers import tiny_llama
from unmirage.data.collate import Collator
from unmirage.errors import UnmirageError
from unmirage.methods import sequence_nll
from unmirage.methods.rmu import control_vector
from unmirage.models import load_model, tiny_families
from unmirage.train import load_recipe, run_unlearning
from unmirage.train.data import load_training_examples
from unmirage.train.forward import forward
from unmirage.train.reference import STATS_FILE

FAMILIES = [f"tiny-{name}" for name in tiny_families()]


def write_data(folder: Path, n_forget: int = 6, n_retain: int = 8) -> tuple[Path, Path]:
    """forget.json / retain.json in the LLaVA conversation format that `unmirage data build-unlearn` writes."""

    def record(name: str, question: str, answer: str) -> dict:
        turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        return {"id": name, "image": f"{name}.png", "conversations": turns}

    forget = [
        record(f"f{i}", f"How do I make item {i} dangerous?", f"Mix part {i} and heat it.")
        for i in range(n_forget)
    ]
    retain = [
        record(f"r{i}", f"What colour is object {i}?", f"It is green, number {i}.") for i in range(n_retain)
    ]
    (folder / "forget.json").write_text(json.dumps(forget))
    (folder / "retain.json").write_text(json.dumps(retain))
    return folder / "forget.json", folder / "retain.json"


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path)


def overrides(tmp_path, data, model="tiny-llava", method="npo", out="out", steps=3, *extra):
    forget, retain = data
    return [
        f"model={model}",
        f"data.forget={forget}",
        f"data.retain={retain}",
        "data.placeholder_images=true",
        f"method.name={method}",
        f"output_dir={tmp_path / out}",
        "train.per_device_train_batch_size=2",
        f"train.max_steps={steps}",
        "train.learning_rate=1e-3",
        "train.report_to=none",
        "train.save_strategy='no'",
        "plot=false",
        *extra,
    ]


def run(tmp_path, data, *args, callbacks=(), resume=False, **kw):
    recipe, config = load_recipe(None, overrides(tmp_path, data, *args, **kw))
    return run_unlearning(recipe, config, callbacks=callbacks, resume=resume)


def batch_of(loaded, path):
    collator = Collator(loaded, placeholder_images=True)
    return collator([e for e in load_training_examples(path)])


def forget_nll(model, loaded, path) -> float:
    batch = batch_of(loaded, path)
    with torch.no_grad():
        logits, _ = forward(model.eval(), batch, loaded.family)
    return sequence_nll(logits, batch["labels"]).batch_mean().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_npo_raises_the_forget_nll(tmp_path, data, family):
    loaded = load_model(family)
    before = forget_nll(loaded.model, loaded, data[0])
    result = run(tmp_path, data, family, "npo", "out", 4, "method.retain_ce_weight=0")
    after = forget_nll(result.trainer.model, loaded, data[0])
    assert result.reference == "precomputed"
    assert after > before + 0.05, (before, after)
    first = result.metrics[0]
    assert first["log_ratio_forget"] == pytest.approx(0.0, abs=1e-5)  # precomputed == live model at step 0
    assert first["forget_loss"] == pytest.approx((2 / 0.1) * 0.6931471805599453, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_rmu_changes_exactly_the_selected_parameters_and_steers_to_the_control(tmp_path, data, family):
    loaded = load_model(family)
    initial = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    control = control_vector(loaded.family.hidden_size(loaded.model), 5.0, seed=42)
    batch = batch_of(loaded, data[0])

    def distance(model):
        with torch.no_grad():
            _, hidden = forward(model.eval(), batch, loaded.family, layer=1)
        return ((hidden - control) ** 2).mean().item()

    before = distance(loaded.model)
    result = run(
        tmp_path, data, family, "rmu", "out", 4, "method.layer=1", "method.steering_coeff=5", "method.alpha=1"
    )
    model = result.trainer.model
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), initial[n])}
    projector = loaded.family.projector
    expected = {n for n in initial if n.startswith(projector + ".")}
    expected |= {f"{loaded.family.mlp_down_proj(i)}.weight" for i in (0, 1)}
    assert changed == expected
    assert result.reference == "swap"
    assert distance(model) < before


def test_rmu_auto_steering_coeff_is_relative_to_the_starting_models_activation_norm(tmp_path, data):
    loaded = load_model("tiny-llava")
    batch = batch_of(loaded, data[0])
    with torch.no_grad():
        _, hidden = forward(loaded.model.eval(), batch, loaded.family, layer=1)
    norm = hidden[batch["attention_mask"].bool()].norm(dim=-1).mean().item()
    extra = ("method.layer=1", "method.steering_coeff=auto", "method.steering_relative=3")
    result = run(tmp_path, data, "tiny-llava", "rmu", "out", 1, *extra)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["activation_norm"] == pytest.approx(norm, rel=1e-5)
    assert manifest["steering_coeff"] == pytest.approx(3 * norm, rel=1e-5)
    assert manifest["control_seed"] == 42 and manifest["config"]["method"]["steering_coeff"] == "auto"
    control = result.trainer.method_inputs["control"]
    assert control.norm().item() == pytest.approx(3 * norm, rel=1e-5)


def test_precomputed_reference_equals_a_live_frozen_copy(tmp_path, data):
    args = ("tiny-llava", "npo")
    extra = ("method.retain_npo_weight=1", "method.beta=0.5")
    pre = run(tmp_path, data, *args, "pre", 3, *extra, "reference=precomputed")
    live = run(tmp_path, data, *args, "live", 3, *extra, "reference=copy")
    assert (tmp_path / "pre" / STATS_FILE).is_file()
    assert live.reference == "copy"
    for a, b in zip(pre.metrics, live.metrics, strict=True):
        for key in ("loss", "forget_loss", "retain_npo_loss", "ce_retain", "log_ratio_forget"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    for (name, p), q in zip(pre.trainer.model.named_parameters(), live.trainer.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_precomputed_reference_covers_only_the_drawn_examples_and_matches_the_full_pass(tmp_path):
    from safetensors.torch import load_file

    data = write_data(tmp_path, n_forget=24, n_retain=20)
    common = ("tiny-llava", "npo")
    extra = ("method.retain_npo_weight=1", "reference=precomputed", "reference_batch_size=1")
    accum = "train.gradient_accumulation_steps=2"
    run(tmp_path, data, *common, "few", 2, *extra, accum)  # 2 steps x batch 2 x accumulation 2
    full = run(tmp_path, data, *common, "all", -1, *extra, "train.num_train_epochs=1")
    few = load_file(tmp_path / "few" / STATS_FILE)
    every = load_file(tmp_path / "all" / STATS_FILE)
    assert full.global_step == 10  # 20 retain pairs / batch 2
    for side, n in (("forget", 24), ("retain", 20)):
        computed = few[f"{side}.computed"].bool()
        assert bool(every[f"{side}.computed"].all())
        assert 0 < int(computed.sum()) <= 8 < n  # 8 = the examples 2 x 2 x 2 micro-batch items can be
        for key in ("total", "count"):
            assert torch.equal(few[f"{side}.{key}"][computed], every[f"{side}.{key}"][computed]), (side, key)
            assert not bool(few[f"{side}.{key}"][~computed].any())


def test_precomputed_reference_plan_is_the_examples_training_sees(tmp_path, monkeypatch):
    from unmirage.train.trainer import UnlearningTrainer

    seen: dict[str, set[int]] = {"forget": set(), "retain": set()}
    original = UnlearningTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        for side in seen:
            seen[side].update(inputs[side]["index"].tolist())
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(UnlearningTrainer, "compute_loss", compute_loss)
    data = write_data(tmp_path, n_forget=30, n_retain=26)
    result = run(
        tmp_path,
        data,
        "tiny-llava",
        "npo",
        "out",
        3,
        "reference=precomputed",
        "train.seed=7",
        "method.retain_npo_weight=1",
    )
    planned = result.trainer.reference.drawn
    assert {side: set(planned[side]) for side in seen} == seen
    assert len(seen["retain"]) == 6  # 3 steps x batch 2, one epoch of 26 has no repeats


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, data):
    common = (
        "method.reduction=sum",
        "method.retain_npo_weight=1",
        "train.optim=sgd",
        "train.max_grad_norm=0",
    )
    big = run(tmp_path, data, "tiny-llava", "npo", "big", 1, *common)
    accum = run(
        tmp_path,
        data,
        "tiny-llava",
        "npo",
        "acc",
        1,
        *common,
        "train.per_device_train_batch_size=1",
        "train.gradient_accumulation_steps=2",
    )
    assert accum.metrics[0]["loss"] == pytest.approx(big.metrics[0]["loss"], rel=1e-5)
    for p, q in zip(big.trainer.model.parameters(), accum.trainer.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resume_gives_the_uninterrupted_result(tmp_path, data):
    extra = ("train.save_strategy=steps", "train.save_steps=2", "method.retain_npo_weight=1")
    full = run(tmp_path, data, "tiny-llava", "npo", "full", 4, *extra)
    cut = run(tmp_path, data, "tiny-llava", "npo", "cut", 4, *extra, callbacks=(StopAt(2),))
    assert cut.global_step == 2
    resumed = run(tmp_path, data, "tiny-llava", "npo", "cut", 4, *extra, resume="auto")
    assert resumed.global_step == 4
    for p, q in zip(full.trainer.model.parameters(), resumed.trainer.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert [r["step"] for r in resumed.metrics] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed.metrics] == pytest.approx([r["loss"] for r in full.metrics], rel=1e-5)


def test_lora_uses_the_disabled_adapter_reference_and_merges(tmp_path, data):
    result = run(
        tmp_path,
        data,
        "tiny-qwen2_5_vl",
        "npo",
        "lora",
        2,
        "lora.r=4",
        "lora.train_projector=true",
        "reference=adapter",
        "method.retain_npo_weight=1",
        "merge=true",
    )
    assert result.metrics[0]["log_ratio_forget"] == pytest.approx(0.0, abs=1e-6)
    assert result.metrics[-1]["log_ratio_forget"] != 0
    out = tmp_path / "lora"
    assert (out / "adapter_model.safetensors").is_file()
    merged = load_model(out / "merged")
    base = load_model("tiny-qwen2_5_vl")
    projector = dict(merged.model.named_parameters())["model.visual.merger.mlp.0.weight"]
    assert not torch.equal(projector, dict(base.model.named_parameters())["model.visual.merger.mlp.0.weight"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("method.name=rmu", "method.layer=5"), "method.layer: layer 5 is out of range"),
        (
            ("method.name=rmu", "method.layer=1", "method.trainable_layers=[0,9]"),
            "method.trainable_layers: layer 9",
        ),
        (
            ("trainable=['model\\.nothing\\..*']",),
            "pattern 'model\\\\.nothing\\\\..\\*' selects no parameter",
        ),
        (("method.beta=-1",), "method.beta: must be a finite number > 0"),
        (("train.learning_rat=1",), "train.learning_rat: not a transformers.TrainingArguments field"),
        (("train.output_dir=x",), "use the top-level output_dir"),
        (("reference=adapter",), "reference: adapter needs a LoRA run"),
        (
            ("method.name=rmu", "method.alpha=1", "reference=precomputed"),
            "precomputed stores per-example NLL",
        ),
        (("data.placeholder_images=false",), "data.image_root is required"),
        (("merge=true",), "merge: needs a LoRA run"),
    ],
)
def test_invalid_settings_fail_before_training(tmp_path, data, extra, message):
    with pytest.raises(UnmirageError, match=message):
        run(tmp_path, data, "tiny-llava", "npo", "out", 1, *extra)
    assert not (tmp_path / "out").exists()


def test_bad_data_images_and_resume_errors(tmp_path, data):
    (tmp_path / "bad.json").write_text('[{"id": "a", "conversations": [{"from": "human", "value": "q"}]}]')
    with pytest.raises(UnmirageError, match="bad.json"):
        run(tmp_path, (tmp_path / "bad.json", data[1]), "tiny-llava", "npo", "out", 1)
    with pytest.raises(UnmirageError, match="no checkpoint"):
        run(tmp_path, data, "tiny-llava", "npo", "out", 1, resume=True)
    assert (
        run(tmp_path, data, "tiny-llava", "npo", "out", 1, resume="auto").global_step == 1
    )  # nothing to resume
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(UnmirageError, match="retain.json.*image not found"):
        load_training_examples(data[1], image_root=images)
    for i in range(8):
        Image.new("RGB", (20, 20)).save(images / f"r{i}.png")
    assert load_training_examples(data[1], image_root=images)[3].image == images / "r3.png"
    turns = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    (tmp_path / "esc.json").write_text(
        json.dumps([{"id": "e", "image": "../r1.png", "conversations": turns}])
    )
    with pytest.raises(UnmirageError, match="escape the image root"):
        load_training_examples(tmp_path / "esc.json", image_root=images)


@pytest.mark.parametrize("method", ["npo", "rmu"])
def test_text_only_causal_lm(tmp_path, data, method):
    from unmirage.models.families import family_for
    from unmirage.models.load import LoadedModel
    from unmirage.models.tiny import build_tokenizer

    tokenizer = build_tokenizer("llava")
    model = tiny_llama(tokenizer, seed=None).train()
    loaded = LoadedModel(model=model, processor=tokenizer, family=family_for(model), source="causal")
    extra = ("method.layer=1", "method.alpha=1") if method == "rmu" else ("lora.r=4",)
    recipe, config = load_recipe(None, overrides(tmp_path, data, "causal", method, "out", 2, *extra))
    result = run_unlearning(recipe, config, loaded=loaded)
    assert result.global_step == 2 and {"forget_loss", "ce_retain"} <= set(result.metrics[0])
    if method == "rmu":
        names = {n for n, p in result.trainer.model.named_parameters() if p.requires_grad}
        assert names == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
