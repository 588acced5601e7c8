"""RMU: steer layer-l activations of forget inputs to a fixed random control vector, keep retain ones.

With `h` = output hidden state of decoder layer `layer` (0-based) and `mask` choosing the positions:

    u ~ Uniform[0,1)^width (seeded), control = steering_coeff * u / |u|
    forget_loss = mean_mask((h_theta(forget) - control)^2)
    retain_loss = alpha * mean_mask((h_theta(retain) - h_frozen(retain))^2)
    ce_retain   = retain_ce_weight * CE_theta(retain batch)

`mask`: `all` (paper parity: every position, padding and image positions included), `text` (attended,
non-image positions), `answer` (positions of answer tokens). Defaults are the reference's argument
defaults (steering_coeff 300, alpha 0); its scripts use layer 7, steering_coeff 10, alpha 1.
`steering_coeff: auto` sets it, once before training, to `steering_relative` x the mean per-token norm of
layer `layer`'s output (attended positions) on up to `CALIBRATION_EXAMPLES` forget examples of the starting
model, so that one setting carries across models whose activation scales differ.
The trainable parameters default to the multimodal projector plus the MLP down-projection of
`trainable_layers` (default: `layer-2 .. layer`, i.e. 5, 6, 7 for layer 7).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from unmirage.errors import UnmirageError
from unmirage.methods.base import (
    POSITION_MASKS,
    LossOutput,
    MethodConfig,
    MethodContext,
    MethodInputs,
    Needs,
    SequenceNLL,
    SideNeeds,
    add_retain_ce,
    check_choice,
    check_positive,
    check_weight,
    config_error,
    detached,
    masked_mse,
    total,
)
from unmirage.methods.registry import register

if TYPE_CHECKING:
    from torch import nn

    from unmirage.models.families import FamilyAdapter

CALIBRATION_EXAMPLES = 64


@dataclass(frozen=True)
class RMUConfig(MethodConfig):
    """RMU hyper-parameters. `control_seed` None = the run's seed."""

    name = "rmu"
    layer: int = 7
    steering_coeff: float | Literal["auto"] = 300.0
    steering_relative: float = 8.0
    alpha: float = 0.0
    retain_ce_weight: float = 1.0
    mask: str = "all"
    trainable_layers: tuple[int, ...] | None = None
    control_seed: int | None = None

    def validate(self) -> None:
        if self.layer < 0:
            raise config_error(self, "layer", f"must be a decoder layer index >= 0, got {self.layer}")
        if self.steering_coeff != "auto" and not (
            isinstance(self.steering_coeff, int | float)
            and math.isfinite(self.steering_coeff)
            and self.steering_coeff > 0
        ):
            raise config_error(
                self, "steering_coeff", f"must be a finite number > 0 or auto, got {self.steering_coeff!r}"
            )
        check_positive(self, "steering_relative")
        check_weight(self, "alpha")
        check_weight(self, "retain_ce_weight")
        check_choice(self, "mask", POSITION_MASKS)
        if self.trainable_layers is not None and (
            not self.trainable_layers or min(self.trainable_layers) < 0
        ):
            raise config_error(
                self,
                "trainable_layers",
                f"must be a non-empty list of indices >= 0, got {self.trainable_layers}",
            )

    def needs(self) -> Needs:
        alpha = bool(self.alpha)
        return Needs(
            forget=SideNeeds(hidden=True),
            retain=SideNeeds(nll=bool(self.retain_ce_weight), hidden=alpha, ref_hidden=alpha),
            layer=self.layer,
            mask=self.mask,
            inputs=("control",),
        )

    def layers_to_train(self) -> tuple[int, ...]:
        """`trainable_layers`, or `layer-2 .. layer` (clipped at 0)."""
        if self.trainable_layers is not None:
            return tuple(self.trainable_layers)
        return tuple(range(max(0, self.layer - 2), self.layer + 1))

    def check_model(self, family: FamilyAdapter, model: nn.Module) -> None:
        """The hooked layer and the trainable layers must exist in this model."""
        n = family.num_layers(model)
        for field, values in (("layer", [self.layer]), ("trainable_layers", self.layers_to_train())):
            bad = [v for v in values if v >= n]
            if bad:
                raise UnmirageError(
                    f"method.{field}: layer {bad[0]} is out of range: the language model has {n} layers "
                    f"(0..{n - 1})"
                )

    def default_trainable(self, family: FamilyAdapter, model: nn.Module) -> list[str]:
        """The projector plus the MLP down-projection weight of `layers_to_train()`."""
        patterns = [re.escape(f"{family.mlp_down_proj(i)}.weight") for i in self.layers_to_train()]
        if family.projector:
            patterns.insert(0, re.escape(family.projector))
        return patterns

    def extra_inputs(self, context: MethodContext) -> MethodInputs:
        """The control vector (seeded by `control_seed`, else the run's seed), calibrating `auto` first."""
        seed = self.control_seed if self.control_seed is not None else context.seed
        record: dict[str, float | int] = {"control_seed": seed}
        coeff = self.steering_coeff
        if coeff == "auto":
            norm = activation_norm(context, self.layer)
            coeff = self.steering_relative * norm
            record.update(activation_norm=norm, steering_coeff=coeff)
        width = context.family.hidden_size(context.model)
        return MethodInputs({"control": control_vector(width, coeff, seed)}, record)


def activation_norm(context: MethodContext, layer: int) -> float:
    """Mean per-token norm of decoder layer `layer`'s output over the attended positions of (up to
    `CALIBRATION_EXAMPLES`) forget examples, in one batch, on the starting model."""
    if not context.forget:
        raise UnmirageError("method.steering_coeff: auto needs forget examples to calibrate on")
    batch = context.collate(list(context.forget[:CALIBRATION_EXAMPLES]))
    hidden = context.hidden(batch, layer)
    attended = batch["attention_mask"].bool().to(hidden.device)
    return float(hidden[attended].float().norm(dim=-1).mean())


def control_vector(width: int, coeff: float, seed: int) -> torch.Tensor:
    """`coeff * u / |u|` with `u ~ Uniform[0,1)^width` from a generator seeded with `seed` (float32, CPU)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(width, generator=generator, dtype=torch.float32)
    return coeff * u / u.norm()


@register(RMUConfig, "Representation misdirection: steer layer-l forget activations to noise.")
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
    add_retain_ce(terms, stats, config.retain_ce_weight, retain_nll)
    return LossOutput(total(terms), terms, detached(stats))
