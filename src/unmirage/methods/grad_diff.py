"""Gradient difference: ascend the forget NLL, descend the retain NLL.

forget_loss = -forget_weight    * CE_theta(forget batch)
ce_retain   =  retain_ce_weight * CE_theta(retain batch)      (both batch-mean token NLL)
"""

from __future__ import annotations

from dataclasses import dataclass

from unmirage.methods.base import (
    LossOutput,
    MethodConfig,
    Needs,
    SequenceNLL,
    SideNeeds,
    add_retain_ce,
    check_positive,
    check_weight,
    detached,
    total,
)
from unmirage.methods.registry import register


@dataclass(frozen=True)
class GradDiffConfig(MethodConfig):
    """Weights of the two terms."""

    name = "grad_diff"
    forget_weight: float = 1.0
    retain_ce_weight: float = 1.0

    def validate(self) -> None:
        check_positive(self, "forget_weight")
        check_weight(self, "retain_ce_weight")

    def needs(self) -> Needs:
        return Needs(forget=SideNeeds(nll=True), retain=SideNeeds(nll=bool(self.retain_ce_weight)))


@register(GradDiffConfig, "Gradient ascent on forget plus NLL on retain.")
def grad_diff_loss(
    config: GradDiffConfig, *, forget_nll: SequenceNLL, retain_nll: SequenceNLL | None = None
) -> LossOutput:
    """Terms `forget_loss` and `ce_retain`."""
    nll_forget = forget_nll.batch_mean()
    terms = {"forget_loss": -config.forget_weight * nll_forget}
    stats = {"nll_forget": nll_forget}
    add_retain_ce(terms, stats, config.retain_ce_weight, retain_nll)
    return LossOutput(total(terms), terms, detached(stats))
