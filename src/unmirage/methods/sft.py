"""Supervised (refusal) fine-tuning: the safety fine-tuning baseline whose mirage the project exposes.

Trains on the `retain` side only (VLGuard refusals, optionally mixed with general instruction data):

    ce_retain = retain_ce_weight * CE_theta(batch)       (batch-mean token NLL)
"""

from __future__ import annotations

from dataclasses import dataclass

from unmirage.methods.base import LossOutput, MethodConfig, SequenceNLL, check_positive, detached
from unmirage.methods.registry import register


@dataclass(frozen=True)
class SFTConfig(MethodConfig):
    """Weight of the (only) CE term."""

    name = "sft"
    retain_ce_weight: float = 1.0

    def validate(self) -> None:
        check_positive(self, "retain_ce_weight")

    def requires(self) -> frozenset[str]:
        return frozenset({"retain_nll"})


def sft_loss(config: SFTConfig, *, retain_nll: SequenceNLL) -> LossOutput:
    """Term `ce_retain`."""
    nll = retain_nll.batch_mean()
    term = config.retain_ce_weight * nll
    return LossOutput(term, {"ce_retain": term}, detached({"nll_retain": nll}))


register("sft", SFTConfig, sft_loss, "Supervised fine-tuning on the retain data (VLGuard refusals).")
