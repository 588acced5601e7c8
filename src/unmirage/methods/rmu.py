"""RMU: steer layer-l activations of forget inputs to a fixed random control vector, keep retain ones.

With `h` = output hidden state of decoder layer `layer` (0-based) and `mask` choosing the positions:

    u ~ Uniform[0,1)^width (seeded), control = steering_coeff * u / |u|
    forget_loss = mean_mask((h_theta(forget) - control)^2)
    retain_loss = alpha * mean_mask((h_theta(retain) - h_frozen(retain))^2)
    ce_retain   = retain_ce_weight * CE_theta(retain batch)

`mask`: `all` (paper parity: every position, padding and image positions included), `text` (attended,
non-image positions), `answer` (positions of answer tokens). Defaults are the reference's argument
defaults (steering_coeff 300, alpha 0); its scripts use layer 7, steering_coeff 10, alpha 1.
The trainable parameters default to the multimodal projector plus the MLP down-projection of
`trainable_layers` (default: `layer-2 .. layer`, i.e. 5, 6, 7 for layer 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unmirage.methods.base import (
    LossOutput,
    MethodConfig,
    SequenceNLL,
    check_choice,
    check_positive,
    check_weight,
    config_error,
    detached,
    masked_mse,
    total,
)
from unmirage.methods.registry import register

MASKS = ("all", "text", "answer")


@dataclass(frozen=True)
class RMUConfig(MethodConfig):
    """RMU hyper-parameters. `control_seed` None = the run's seed."""

    name = "rmu"
    layer: int = 7
    steering_coeff: float = 300.0
    alpha: float = 0.0
    retain_ce_weight: float = 1.0
    mask: str = "all"
    trainable_layers: tuple[int, ...] | None = None
    control_seed: int | None = None

    def validate(self) -> None:
        if self.layer < 0:
            raise config_error(self, "layer", f"must be a decoder layer index >= 0, got {self.layer}")
        check_positive(self, "steering_coeff")
        check_weight(self, "alpha")
        check_weight(self, "retain_ce_weight")
        check_choice(self, "mask", MASKS)
        if self.trainable_layers is not None and (
            not self.trainable_layers or min(self.trainable_layers) < 0
        ):
            raise config_error(
                self,
                "trainable_layers",
                f"must be a non-empty list of indices >= 0, got {self.trainable_layers}",
            )

    def requires(self) -> frozenset[str]:
        needed = {"forget_hidden", "forget_mask", "control"}
        if self.alpha:
            needed |= {"retain_hidden", "retain_ref_hidden", "retain_mask"}
        if self.retain_ce_weight:
            needed.add("retain_nll")
        return frozenset(needed)

    def layers_to_train(self) -> tuple[int, ...]:
        """`trainable_layers`, or `layer-2 .. layer` (clipped at 0)."""
        if self.trainable_layers is not None:
            return tuple(self.trainable_layers)
        return tuple(range(max(0, self.layer - 2), self.layer + 1))


def control_vector(width: int, coeff: float, seed: int) -> torch.Tensor:
    """`coeff * u / |u|` with `u ~ Uniform[0,1)^width` from a generator seeded with `seed` (float32, CPU)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(width, generator=generator, dtype=torch.float32)
    return coeff * u / u.norm()


def rmu_loss(
    config: RMUConfig,
    *,
    forget_hidden: torch.Tensor,
    control: torch.Tensor,
    forget_mask: torch.Tensor | None = None,
    retain_hidden: torch.Tensor | None = None,
    retain_ref_hidden: torch.Tensor | None = None,
    retain_mask: torch.Tensor | None = None,
    retain_nll: SequenceNLL | None = None,
) -> LossOutput:
    """RMU loss with terms `forget_loss`, `retain_loss`, `ce_retain` (masks None = every position)."""
    terms = {"forget_loss": masked_mse(forget_hidden, control.to(forget_hidden.device), forget_mask)}
    stats: dict[str, torch.Tensor] = {}
    if config.alpha:
        terms["retain_loss"] = config.alpha * masked_mse(
            retain_hidden, retain_ref_hidden.detach(), retain_mask
        )
    if config.retain_ce_weight:
        nll = retain_nll.batch_mean()
        terms["ce_retain"] = config.retain_ce_weight * nll
        stats["nll_retain"] = nll
    return LossOutput(total(terms), terms, detached(stats))


register(
    "rmu", RMUConfig, rmu_loss, "Representation misdirection: steer layer-l forget activations to noise."
)
