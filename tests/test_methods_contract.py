"""Contract of every registered unlearning method: a new method file is tested here without writing a test.

Each method's config round-trips through a recipe table, says what it needs with a typed `Needs` its loss
accepts, and its loss (with every optional term switched on) is a finite scalar equal to the sum of its
terms, with detached diagnostics. Each method also trains on a tiny LLaVA with its default settings (8
layers, so that default layer indices exist) through `run_unlearning`, touching only its trainable
parameters. A representation method defined outside the package trains without any change to the trainer.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import types

import pytest
import torch

from test_train import run, write_data
from unmirage.data.collate import Collator
from unmirage.methods import MethodConfig, Needs, available_methods, get_method
from unmirage.methods.base import SIDES, LossOutput, SequenceNLL, SideNeeds, detached, masked_mse, total
from unmirage.methods.registry import _REGISTRY, register
from unmirage.models import load_model
from unmirage.train.data import load_training_examples
from unmirage.train.run import make_method_inputs

TINY = {"layers": 8, "hidden": 32, "heads": 1, "seed": 0}


def variants(name: str) -> list[MethodConfig]:
    """The default config, and one with every weight that defaults to 0 (an optional term) set to 1."""
    spec = get_method(name)
    default = spec.make_config({})
    optional = {
        f.name: 1.0
        for f in dataclasses.fields(default)
        if isinstance(getattr(default, f.name), float) and getattr(default, f.name) == 0.0
    }
    return [default, spec.make_config(optional)] if optional else [default]


def random_nll(g: torch.Generator, *, trained: bool) -> SequenceNLL:
    """Per-example NLL statistics of 2 examples (with a gradient path for the trained model's)."""
    count = torch.randint(1, 9, (2,), generator=g).float()
    summed = count * (0.5 + 3 * torch.rand(2, generator=g))
    return SequenceNLL(summed.requires_grad_(trained), count)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llava", tiny_sizes=TINY)


@pytest.mark.parametrize("name", available_methods())
def test_config_round_trips_and_declares_typed_needs(name):
    spec = get_method(name)
    assert spec.config_cls.name == name and spec.description
    for config in variants(name):
        assert spec.make_config(config.to_dict(), source="recipe.yaml") == config
        json.dumps(config.to_dict())
        needs = config.needs()
        assert isinstance(needs, Needs)
        assert needs.uses_forget or needs.retain.any, "a loss must need something"
        params = inspect.signature(spec.loss_fn).parameters
        assert needs.arguments() <= set(params), "the loss must accept every quantity its config needs"


@pytest.mark.parametrize("name", available_methods())
def test_loss_is_the_sum_of_its_terms_on_what_it_needs(tmp_path, name, tiny):
    spec = get_method(name)
    collator = Collator(tiny, placeholder_images=True)
    forget = load_training_examples(write_data(tmp_path)[0])
    args = types.SimpleNamespace(device="cpu")
    width = tiny.family.hidden_size(tiny.model)
    for config in variants(name):
        needs = config.needs()
        g = torch.Generator().manual_seed(0)
        quantities = {}
        for side in SIDES:
            want = needs.side(side)
            if want.nll:
                quantities[f"{side}_nll"] = random_nll(g, trained=True)
            if want.ref_nll:
                quantities[f"{side}_ref_nll"] = random_nll(g, trained=False)
            if want.hidden:
                quantities[f"{side}_hidden"] = torch.randn(2, 3, width, generator=g, requires_grad=True)
                quantities[f"{side}_mask"] = torch.ones(2, 3, dtype=torch.bool)
            if want.ref_hidden:
                quantities[f"{side}_ref_hidden"] = torch.randn(2, 3, width, generator=g)
        inputs = make_method_inputs(config, tiny, collator, args, forget=forget, seed=0, zero3=False)
        assert set(inputs.tensors) == set(needs.inputs)
        out = spec.loss_fn(config, **quantities, **inputs.tensors)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        torch.testing.assert_close(out.loss, sum(out.terms.values()))
        out.loss.backward()
        assert all(not v.requires_grad for v in out.stats.values())


@pytest.mark.parametrize("name", available_methods())
def test_every_method_trains_with_its_defaults_on_a_tiny_model(tmp_path, name, tiny):
    data = write_data(tmp_path)
    extra = (f"tiny_sizes={json.dumps(TINY)}", "train.logging_steps=1")
    initial = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    result = run(tmp_path, data, "tiny-llava", name, "out", 2, *extra)
    model = result.trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), initial[n])}
    assert changed and changed <= trainable
    assert len(result.metrics) == 2
    assert all(math.isfinite(row["loss"]) for row in result.metrics)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["method"] == name and manifest["trainable_parameters"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


@dataclasses.dataclass(frozen=True)
class SteerToZeroConfig(MethodConfig):
    """A representation method defined outside the package: push forget activations of `layer` to zero,
    keep the reference's retain activations, trained on the down-projection of `layer` only."""

    name = "steer_to_zero"
    layer: int = 1
    alpha: float = 1.0

    def validate(self) -> None:
        pass

    def needs(self) -> Needs:
        return Needs(
            forget=SideNeeds(hidden=True),
            retain=SideNeeds(hidden=True, ref_hidden=True),
            layer=self.layer,
            mask="text",
        )

    def default_trainable(self, family, model) -> list[str]:
        return [re.escape(f"{family.mlp_down_proj(self.layer)}.weight")]


def steer_to_zero_loss(
    config: SteerToZeroConfig,
    *,
    forget_hidden: torch.Tensor,
    forget_mask: torch.Tensor,
    retain_hidden: torch.Tensor,
    retain_ref_hidden: torch.Tensor,
    retain_mask: torch.Tensor,
) -> LossOutput:
    terms = {
        "forget_loss": masked_mse(forget_hidden, torch.zeros(()), forget_mask),
        "retain_loss": config.alpha * masked_mse(retain_hidden, retain_ref_hidden, retain_mask),
    }
    return LossOutput(total(terms), terms, detached({}))


@pytest.fixture
def steer_to_zero():
    register(SteerToZeroConfig, "Steer forget activations to zero (test plug-in).")(steer_to_zero_loss)
    yield get_method("steer_to_zero")
    del _REGISTRY["steer_to_zero"]


def test_a_new_representation_method_needs_only_its_own_definition(tmp_path, steer_to_zero):
    extra = ("method.layer=1", "train.logging_steps=1", "train.learning_rate=1e-2")
    result = run(tmp_path, write_data(tmp_path), "tiny-llava", "steer_to_zero", "out", 3, *extra)
    model = result.trainer.model
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "model.language_model.layers.1.mlp.down_proj.weight"
    ]
    assert result.reference == "swap"  # the reference's activations, from the initial trainable weights
    rows = result.metrics
    assert rows[0]["retain_loss"] == pytest.approx(0.0, abs=1e-10)  # the reference is the starting model
    assert rows[-1]["forget_loss"] < rows[0]["forget_loss"]
