"""Supervised (refusal) fine-tuning: the safety fine-tuning baseline whose mirage the project exposes.

Trains on the `retain` side only (VLGuard refusals, optionally mixed with general instruction data):

    ce_retain = retain_ce_weight * CE_theta(batch)       (batch-mean token NLL)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unmirage.methods.base import (
    LossOutput,
    MethodConfig,
    Needs,
    SequenceNLL,
    SideNeeds,
    add_retain_ce,
    check_positive,
    detached,
    total,
)
from unmirage.methods.registry import register


@dataclass(frozen=True)
class SFTConfig(MethodConfig):
    """Weight of the (only) CE term."""

    name = "sft"
    retain_ce_weight: float = 1.0

    def validate(self) -> None:
        check_positive(self, "retain_ce_weight")

    def needs(self) -> Needs:
        return Needs(retain=SideNeeds(nll=True))


@register(SFTConfig, "Supervised fine-tuning on the retain data (VLGuard refusals).")
def sft_loss(config: SFTConfig, *, retain_nll: SequenceNLL) -> LossOutput:
    """Term `ce_retain`."""
    terms: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    add_retain_ce(terms, stats, config.retain_ce_weight, retain_nll)
    return LossOutput(total(terms), terms, detached(stats))
