"""Gradient ascent: maximise the forget NLL.

forget_loss = -forget_weight * CE_theta(forget batch)      (batch-mean token NLL)
"""

from __future__ import annotations

from dataclasses import dataclass

from unmirage.methods.base import (
    LossOutput,
    MethodConfig,
    Needs,
    SequenceNLL,
    SideNeeds,
    check_positive,
    detached,
)
from unmirage.methods.registry import register


@dataclass(frozen=True)
class GradAscentConfig(MethodConfig):
    """Gradient-ascent weight."""

    name = "grad_ascent"
    forget_weight: float = 1.0

    def validate(self) -> None:
        check_positive(self, "forget_weight")

    def needs(self) -> Needs:
        return Needs(forget=SideNeeds(nll=True))


@register(GradAscentConfig, "Gradient ascent on the forget NLL.")
def grad_ascent_loss(config: GradAscentConfig, *, forget_nll: SequenceNLL) -> LossOutput:
    """Negated forget NLL, term `forget_loss`."""
    nll = forget_nll.batch_mean()
    term = -config.forget_weight * nll
    return LossOutput(term, {"forget_loss": term}, detached({"nll_forget": nll}))
