"""SimNPO: reference-free, length-normalised NPO with a margin.

Per forget example with mean token NLL `m_i` (its answer's summed NLL divided by its length):

    forget_loss = forget_weight    * mean_i (2/beta) * softplus(gamma - beta * m_i)
                = forget_weight    * mean_i -(2/beta) * logsigmoid(beta * m_i - gamma)
    ce_retain   = retain_ce_weight * CE_theta(retain batch)
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
    check_positive,
    check_weight,
    detached,
    total,
)
from unmirage.methods.registry import register


@dataclass(frozen=True)
class SimNPOConfig(MethodConfig):
    """SimNPO hyper-parameters (`gamma` is the margin, not scaled by beta)."""

    name = "simnpo"
    beta: float = 2.5
    gamma: float = 0.0
    forget_weight: float = 1.0
    retain_ce_weight: float = 1.0

    def validate(self) -> None:
        check_positive(self, "beta")
        check_weight(self, "gamma")
        check_weight(self, "forget_weight")
        check_weight(self, "retain_ce_weight")
        check_any_weight(self, ("forget_weight", "retain_ce_weight"))

    def needs(self) -> Needs:
        return Needs(
            forget=SideNeeds(nll=bool(self.forget_weight)), retain=SideNeeds(nll=bool(self.retain_ce_weight))
        )


@register(SimNPOConfig, "Reference-free, length-normalised NPO with a margin (SimNPO).")
def simnpo_loss(
    config: SimNPOConfig, *, forget_nll: SequenceNLL | None = None, retain_nll: SequenceNLL | None = None
) -> LossOutput:
    """SimNPO loss with terms `forget_loss` and `ce_retain`."""
    terms: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    if config.forget_weight:
        margin = config.gamma - config.beta * forget_nll.per_example_mean()
        terms["forget_loss"] = config.forget_weight * (F.softplus(margin) * (2.0 / config.beta)).mean()
        stats["nll_forget"] = forget_nll.batch_mean()
    add_retain_ce(terms, stats, config.retain_ce_weight, retain_nll)
    return LossOutput(total(terms), terms, detached(stats))
