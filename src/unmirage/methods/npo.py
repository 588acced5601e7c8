"""NPO: negative preference optimisation against a frozen reference, with the reference's retain terms.

With `d = NLL_theta - NLL_ref` on the forget batch (how NLL is reduced is `reduction`, below):

    forget_loss     = forget_weight     * (2/beta) * softplus(-beta * d_forget)
    retain_npo_loss = retain_npo_weight * (2/beta) * logsigmoid(beta * d_retain)     (optional)
    ce_retain       = retain_ce_weight  * CE_theta(retain batch)

`reduction`:
- `batch_mean` (paper parity): NLL = the mean token NLL over all answer tokens of the (micro-)batch, exactly
  the `loss` a Hugging Face model returns; `d` is one number per batch. Under gradient accumulation the
  batch is the micro-batch (`per_device_train_batch_size`), as in the reference.
- `sum`: per example, NLL = the summed token NLL of its answer (the sequence log-probability of the NPO
  paper and open-unlearning); the loss is the mean over examples of the per-example terms.
- `mean`: per example, NLL = its mean token NLL; the loss is the mean over examples.
`beta` is not comparable across reductions. The retain-NPO term uses the retain batch of the step (one
forward serves it and the CE term). `ce_retain` is always the batch-mean token NLL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unmirage.methods.base import (
    LossOutput,
    MethodConfig,
    Needs,
    SequenceNLL,
    SideNeeds,
    add_retain_ce,
    check_any_weight,
    check_choice,
    check_positive,
    check_weight,
    detached,
    total,
)
from unmirage.methods.registry import register

REDUCTIONS = ("batch_mean", "sum", "mean")


@dataclass(frozen=True)
class NPOConfig(MethodConfig):
    """NPO hyper-parameters; the defaults are the reference code's argument defaults."""

    name = "npo"
    beta: float = 0.1
    forget_weight: float = 1.0
    retain_npo_weight: float = 0.0
    retain_ce_weight: float = 1.0
    reduction: str = "batch_mean"

    def validate(self) -> None:
        check_positive(self, "beta")
        for field in ("forget_weight", "retain_npo_weight", "retain_ce_weight"):
            check_weight(self, field)
        check_any_weight(self, ("forget_weight", "retain_npo_weight", "retain_ce_weight"))
        check_choice(self, "reduction", REDUCTIONS)

    def needs(self) -> Needs:
        forget = bool(self.forget_weight)
        retain_npo = bool(self.retain_npo_weight)
        return Needs(
            forget=SideNeeds(nll=forget, ref_nll=forget),
            retain=SideNeeds(nll=retain_npo or bool(self.retain_ce_weight), ref_nll=retain_npo),
        )


def log_ratio(policy: SequenceNLL, reference: SequenceNLL, reduction: str) -> torch.Tensor:
    """`NLL_policy - NLL_reference` reduced as `reduction` says: a 1-element tensor for `batch_mean`, else
    one value per example."""
    if reduction == "batch_mean":
        return (policy.batch_mean() - reference.batch_mean()).reshape(1)
    if reduction == "sum":
        return policy.total - reference.total
    if reduction == "mean":
        return policy.per_example_mean() - reference.per_example_mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def npo_forget_term(d: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean of `(2/beta) * softplus(-beta * d)` (= `-(2/beta) logsigmoid(beta d)`); `ln 2 * 2/beta` at d = 0."""
    return (F.softplus(-beta * d) * (2.0 / beta)).mean()


@register(NPOConfig, "Negative preference optimisation against the frozen starting model.")
def npo_loss(
    config: NPOConfig,
    *,
    forget_nll: SequenceNLL | None = None,
    forget_ref_nll: SequenceNLL | None = None,
    retain_nll: SequenceNLL | None = None,
    retain_ref_nll: SequenceNLL | None = None,
) -> LossOutput:
    """The NPO loss and its weighted terms `forget_loss`, `retain_npo_loss`, `ce_retain` (see module doc)."""
    terms: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    if config.forget_weight:
        d_forget = log_ratio(forget_nll, forget_ref_nll, config.reduction)
        terms["forget_loss"] = config.forget_weight * npo_forget_term(d_forget, config.beta)
        stats["nll_forget"] = forget_nll.batch_mean()
        stats["log_ratio_forget"] = d_forget.mean()
    if config.retain_npo_weight:
        d_retain = log_ratio(retain_nll, retain_ref_nll, config.reduction)
        retain_npo = (F.logsigmoid(config.beta * d_retain) * (2.0 / config.beta)).mean()
        terms["retain_npo_loss"] = config.retain_npo_weight * retain_npo
        stats["log_ratio_retain"] = d_retain.mean()
    if retain_nll is not None:
        stats["nll_retain"] = retain_nll.batch_mean()
    add_retain_ce(terms, stats, config.retain_ce_weight, retain_nll)
    return LossOutput(total(terms), terms, detached(stats))
