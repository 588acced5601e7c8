"""Each method's loss against hand-computed values on random tensors; configs are validated before compute."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unmirage.errors import UnmirageError
from unmirage.methods import (
    MethodContext,
    SequenceNLL,
    SideNeeds,
    get_method,
    masked_mse,
    sequence_nll,
)
from unmirage.methods.base import add_retain_ce, answer_positions
from unmirage.methods.npo import NPOConfig, log_ratio, npo_loss
from unmirage.methods.rmu import RMUConfig, control_vector, rmu_loss
from unmirage.methods.simnpo import SimNPOConfig, simnpo_loss

LN2 = math.log(2.0)


def random_nll(seed: int, batch: int = 4) -> SequenceNLL:
    g = torch.Generator().manual_seed(seed)
    count = torch.randint(1, 20, (batch,), generator=g).float()
    total = count * (0.5 + 3 * torch.rand(batch, generator=g))
    return SequenceNLL(total.requires_grad_(), count)


def test_registry_rejects_unknown_methods():
    with pytest.raises(UnmirageError, match="unknown method 'dpo'.*npo"):
        get_method("dpo")


def test_sequence_nll_matches_token_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :4] = -100
    labels[1, :] = -100  # no answer tokens at all
    labels[2, :2] = -100
    stats = sequence_nll(logits, labels)
    token = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), reduction="none").view(
        3, 6
    )
    keep = labels[:, 1:] != -100
    torch.testing.assert_close(stats.total, (token * keep).sum(1))
    torch.testing.assert_close(stats.count, keep.sum(1).float())
    # batch_mean is exactly the Hugging Face causal-LM loss (mean over all answer tokens of the batch)
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(stats.batch_mean(), hf)
    assert stats.per_example_mean()[1] == 0
    # the answer positions' logits alone (what the trainer's forward returns) give the same statistics
    answers = sequence_nll(logits[answer_positions(labels)], labels)
    torch.testing.assert_close(answers.total, stats.total)
    with pytest.raises(ValueError, match="answer positions"):
        sequence_nll(logits[:, :-1].reshape(-1, 11), labels)


def test_answer_positions_are_the_positions_before_each_labelled_token():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, -100, -100]])
    expected = torch.tensor([[False, True, True, False, False], [True, False, False, False, False]])
    assert torch.equal(answer_positions(labels), expected)


@pytest.mark.parametrize("reduction", ["batch_mean", "sum", "mean"])
def test_npo_at_the_reference_is_ln2_terms(reduction):
    beta, a_f, a_r, w = 0.9, 1.5, 0.7, 2.0
    config = NPOConfig(
        beta=beta, forget_weight=a_f, retain_npo_weight=a_r, retain_ce_weight=w, reduction=reduction
    )
    forget, retain = random_nll(1), random_nll(2)
    out = npo_loss(
        config,
        forget_nll=forget,
        forget_ref_nll=forget.detach(),
        retain_nll=retain,
        retain_ref_nll=retain.detach(),
    )
    assert set(out.terms) == {"forget_loss", "retain_npo_loss", "ce_retain"}
    torch.testing.assert_close(out.terms["forget_loss"], torch.tensor(a_f * (2 / beta) * LN2))
    torch.testing.assert_close(out.terms["retain_npo_loss"], torch.tensor(-a_r * (2 / beta) * LN2))
    torch.testing.assert_close(out.terms["ce_retain"], w * retain.total.sum() / retain.count.sum())
    torch.testing.assert_close(out.loss, sum(out.terms.values()))


def test_npo_parity_uses_the_batch_mean_log_ratio():
    beta = 0.5
    policy, reference = random_nll(3), random_nll(4)
    reference = SequenceNLL(reference.total.detach(), policy.count)  # same answers, other model
    out = npo_loss(NPOConfig(beta=beta, retain_ce_weight=0), forget_nll=policy, forget_ref_nll=reference)
    n = policy.count.sum()
    d = policy.total.detach().sum() / n - reference.total.sum() / n
    expected = (2 / beta) * math.log1p(math.exp(-beta * d.item()))
    assert out.terms["forget_loss"].item() == pytest.approx(expected, rel=1e-5)
    # gradient: dL/dtotal_i = -2 sigmoid(-beta d) / sum(count), the same for every example
    out.loss.backward()
    grad = -2 * torch.sigmoid(-beta * d) / n
    torch.testing.assert_close(policy.total.grad, grad.expand(4))


def test_npo_sum_reduction_is_per_example_then_mean():
    beta = 0.2
    policy, reference = random_nll(5), random_nll(6)
    out = npo_loss(
        NPOConfig(beta=beta, retain_ce_weight=0, reduction="sum"),
        forget_nll=policy,
        forget_ref_nll=reference.detach(),
    )
    d = (policy.total - reference.total).detach()
    expected = ((2 / beta) * torch.log1p(torch.exp(-beta * d))).mean()
    torch.testing.assert_close(out.terms["forget_loss"], expected)
    assert log_ratio(policy, reference, "sum").shape == (4,)
    assert log_ratio(policy, reference, "batch_mean").shape == (1,)
    # raising the forget NLL lowers the loss
    out.loss.backward()
    assert (policy.total.grad < 0).all()


def test_npo_needs_only_what_its_weights_use():
    assert NPOConfig().needs().arguments() == {"forget_nll", "forget_ref_nll", "retain_nll"}
    assert NPOConfig(retain_ce_weight=0).needs().arguments() == {"forget_nll", "forget_ref_nll"}
    assert NPOConfig(retain_npo_weight=1).needs().retain == SideNeeds(nll=True, ref_nll=True)
    assert NPOConfig(retain_npo_weight=1).uses_reference
    assert not NPOConfig(forget_weight=0, retain_npo_weight=1).uses_forget
    assert NPOConfig().uses_forget
    assert not NPOConfig().needs().reference_hidden


def test_simnpo_hand_value_and_margin():
    beta, gamma = 2.5, 0.3
    forget, retain = random_nll(7), random_nll(8)
    out = simnpo_loss(
        SimNPOConfig(beta=beta, gamma=gamma, forget_weight=2.0), forget_nll=forget, retain_nll=retain
    )
    m = (forget.total / forget.count).detach()
    expected = 2.0 * ((2 / beta) * torch.log1p(torch.exp(gamma - beta * m))).mean()
    torch.testing.assert_close(out.terms["forget_loss"], expected)
    assert not SimNPOConfig().uses_reference


def test_ascent_difference_and_sft_values():
    forget, retain = random_nll(9), random_nll(10)
    f_mean = forget.total.sum() / forget.count.sum()
    r_mean = retain.total.sum() / retain.count.sum()
    ga = get_method("grad_ascent")
    out = ga.loss_fn(ga.make_config({"forget_weight": 0.5}), forget_nll=forget)
    torch.testing.assert_close(out.loss, -0.5 * f_mean)
    gd = get_method("grad_diff")
    out = gd.loss_fn(gd.make_config({"retain_ce_weight": 3}), forget_nll=forget, retain_nll=retain)
    torch.testing.assert_close(out.terms["ce_retain"], 3 * r_mean)
    torch.testing.assert_close(out.loss, -f_mean + 3 * r_mean)
    sft = get_method("sft")
    config = sft.make_config({})
    assert not config.uses_forget
    torch.testing.assert_close(sft.loss_fn(config, retain_nll=retain).terms["ce_retain"], r_mean)


def test_control_vector_is_seeded_unit_direction_times_c():
    u = control_vector(64, 10.0, seed=3)
    assert u.norm().item() == pytest.approx(10.0, rel=1e-6)
    assert (u >= 0).all()
    torch.testing.assert_close(u, control_vector(64, 10.0, seed=3))
    assert not torch.equal(u, control_vector(64, 10.0, seed=4))


def test_rmu_terms_and_masks():
    g = torch.Generator().manual_seed(11)
    forget = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    retain = torch.randn(2, 6, 8, generator=g, requires_grad=True)
    frozen = torch.randn(2, 6, 8, generator=g)
    control = control_vector(8, 4.0, seed=0)
    retain_nll = random_nll(12, batch=2)
    config = RMUConfig(layer=1, steering_coeff=4.0, alpha=2.0, retain_ce_weight=0.5)
    out = rmu_loss(
        config,
        forget_hidden=forget,
        control=control,
        retain_hidden=retain,
        retain_ref_hidden=frozen,
        retain_nll=retain_nll,
    )
    torch.testing.assert_close(out.terms["forget_loss"], ((forget - control) ** 2).mean())
    torch.testing.assert_close(out.terms["retain_loss"], 2.0 * ((retain - frozen) ** 2).mean())
    torch.testing.assert_close(out.terms["ce_retain"], 0.5 * retain_nll.batch_mean())
    out.loss.backward()
    torch.testing.assert_close(forget.grad, 2 * (forget - control).detach() / forget.numel())
    # a mask averages over the chosen positions only
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1:3] = True
    mask[1, 4] = True
    masked = rmu_loss(
        RMUConfig(layer=1), forget_hidden=forget, forget_mask=mask, control=control, retain_nll=retain_nll
    )
    torch.testing.assert_close(masked.terms["forget_loss"], ((forget[mask] - control) ** 2).mean())
    assert masked_mse(forget, control, torch.zeros(2, 5, dtype=torch.bool)).item() == 0.0


def test_rmu_default_trainable_layers():
    assert RMUConfig(layer=7).layers_to_train() == (5, 6, 7)
    assert RMUConfig(layer=1).layers_to_train() == (0, 1)
    assert RMUConfig(layer=7, trainable_layers=(3,)).layers_to_train() == (3,)
    needs = RMUConfig(alpha=0, layer=3, mask="text").needs()
    assert needs.arguments() == {"forget_hidden", "forget_mask", "control", "retain_nll"}
    assert (needs.layer, needs.mask, needs.inputs) == (3, "text", ("control",))
    assert RMUConfig(alpha=1).needs().reference_hidden


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("npo", {"beta": -0.1}, "method.beta: must be a finite number > 0"),
        ("npo", {"beta": 0}, "method.beta"),
        ("npo", {"forget_weight": -1}, "method.forget_weight: must be a finite weight >= 0"),
        ("npo", {"reduction": "max"}, "method.reduction: must be one of batch_mean, sum, mean"),
        ("npo", {"forget_weight": 0, "retain_ce_weight": 0}, "the loss would be constant"),
        ("npo", {"beta": "big"}, "method.beta: Input should be a valid number"),
        ("npo", {"betta": 0.9}, "method.betta: unknown key for method 'npo'"),
        ("rmu", {"layer": -1}, "method.layer: must be a decoder layer index >= 0"),
        ("rmu", {"steering_coeff": float("nan")}, "method.steering_coeff"),
        ("rmu", {"steering_coeff": "high"}, "method.steering_coeff"),
        ("rmu", {"steering_coeff": True}, "method.steering_coeff: must be a float or auto, not true"),
        ("rmu", {"steering_relative": 0}, "method.steering_relative: must be a finite number > 0"),
        ("rmu", {"mask": "image"}, "method.mask: must be one of all, text, answer"),
        ("rmu", {"trainable_layers": []}, "method.trainable_layers"),
        ("simnpo", {"gamma": -1}, "method.gamma"),
        ("grad_ascent", {"forget_weight": 0}, "method.forget_weight"),
        ("sft", {"retain_ce_weight": float("inf")}, "method.retain_ce_weight"),
    ],
)
def test_invalid_hyper_parameters_are_one_line_errors(name, values, message):
    with pytest.raises(UnmirageError, match=message) as err:
        get_method(name).make_config(values, source="recipe.yaml")
    assert str(err.value).startswith("recipe.yaml: ")
    assert "\n" not in str(err.value)


def test_retain_ce_helper_adds_the_weighted_batch_mean_only_with_a_weight():
    retain = random_nll(30)
    terms, stats = {}, {}
    add_retain_ce(terms, stats, 0.0, None)
    assert terms == {} and stats == {}
    add_retain_ce(terms, stats, 2.5, retain)
    mean = retain.total.sum() / retain.count.sum()
    torch.testing.assert_close(terms["ce_retain"], 2.5 * mean)
    torch.testing.assert_close(stats["nll_retain"], mean)


def fake_context(hidden: torch.Tensor, attention: torch.Tensor, seed: int = 0) -> MethodContext:
    """A context whose model has width 4 and whose layer output is `hidden` (records what was asked)."""
    model = torch.nn.Linear(1, 1)
    model.config = type("Config", (), {"hidden_size": hidden.shape[-1]})()
    family = type("Family", (), {"hidden_size": lambda self, m: m.config.hidden_size})()
    seen = {}

    def collate(examples):
        seen["examples"] = list(examples)
        return {"attention_mask": attention}

    def layer_output(batch, layer):
        seen["layer"] = layer
        return hidden

    context = MethodContext(model, family, seed, list(range(100)), collate, layer_output)
    context.seen = seen
    return context


def test_rmu_auto_steering_coeff_is_relative_to_the_mean_attended_activation_norm():
    hidden = torch.zeros(2, 3, 4)
    hidden[0, 0] = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5
    hidden[0, 1] = torch.tensor([0.0, 0.0, 6.0, 8.0])  # norm 10
    hidden[1, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # norm 1
    hidden[1, 2] = torch.tensor([100.0, 0.0, 0.0, 0.0])  # padding: not counted
    attention = torch.tensor([[1, 1, 0], [1, 0, 0]])
    context = fake_context(hidden, attention, seed=5)
    inputs = RMUConfig(layer=2, steering_coeff="auto", steering_relative=3.0).extra_inputs(context)
    norm = (5 + 10 + 1) / 3
    assert context.seen["layer"] == 2 and context.seen["examples"] == list(range(64))
    assert inputs.record == {
        "control_seed": 5,
        "activation_norm": pytest.approx(norm),
        "steering_coeff": pytest.approx(3 * norm),
    }
    torch.testing.assert_close(inputs.tensors["control"], control_vector(4, 3 * norm, seed=5))
    # a number is used as given, without a calibrating forward; control_seed wins over the run's seed
    fixed = fake_context(hidden, attention, seed=5)
    inputs = RMUConfig(steering_coeff=7.0, control_seed=9).extra_inputs(fixed)
    assert inputs.record == {"control_seed": 9} and "layer" not in fixed.seen
    torch.testing.assert_close(inputs.tensors["control"], control_vector(4, 7.0, seed=9))
