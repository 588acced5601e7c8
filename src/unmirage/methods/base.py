"""Shared pieces of the unlearning methods: per-example NLL statistics, validated configs, loss outputs.

A method is a config dataclass plus a pure loss function on tensors. The trainer computes the quantities a
method asks for (`MethodConfig.requires()`), by these names, and passes them as keyword arguments:

- `forget_nll`, `retain_nll`: `SequenceNLL` of the trained model on the forget / retain batch;
- `forget_ref_nll`, `retain_ref_nll`: the same for the frozen reference model;
- `forget_hidden`, `retain_hidden`, `retain_ref_hidden`: output hidden states of one decoder layer,
  `[batch, positions, width]`, with `forget_mask` / `retain_mask` (`[batch, positions]`, bool) saying which
  positions count (RMU);
- `control`: RMU's control vector `[width]`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
import torch.nn.functional as F

from unmirage.errors import UnmirageError

IGNORE_INDEX = -100

C = TypeVar("C", bound="MethodConfig")


class LossOutput(NamedTuple):
    """A method's loss, its named terms (each already multiplied by its weight; they sum to `loss`) and
    unweighted diagnostics (`stats`, detached) such as the forget NLL."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]


@dataclass(frozen=True)
class SequenceNLL:
    """Per-example answer statistics: `total[i]` = summed token NLL of example i's answer tokens,
    `count[i]` = its number of answer tokens. Both `[batch]`, float."""

    total: torch.Tensor
    count: torch.Tensor

    def batch_mean(self) -> torch.Tensor:
        """Mean token NLL over all answer tokens of the batch (what a Hugging Face model returns as `loss`)."""
        return self.total.sum() / self.count.sum().clamp_min(1)

    def per_example_mean(self) -> torch.Tensor:
        """`[batch]`: each example's mean token NLL (length-normalised)."""
        return self.total / self.count.clamp_min(1)

    def detach(self) -> SequenceNLL:
        return SequenceNLL(self.total.detach(), self.count.detach())


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> SequenceNLL:
    """Causal-LM NLL per example: position t predicts label t+1; positions labelled `ignore_index` are skipped.

    Only the answer positions' logits are turned into log-probabilities (in float32), so memory grows with
    the number of answer tokens, not with the sequence length.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    targets = labels[:, 1:]
    keep = targets != ignore_index
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)[keep]
    picked = logits[:, :-1][keep].float()
    token_nll = F.cross_entropy(picked, targets[keep], reduction="none")
    total = torch.zeros(labels.shape[0], dtype=torch.float32, device=logits.device)
    total = total.index_add(0, rows, token_nll)
    count = keep.sum(dim=1).to(torch.float32)
    return SequenceNLL(total, count)


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of `(a - b)^2` over the positions where `mask` is true and over every feature.

    `a`: `[batch, positions, width]`; `b` broadcastable to it; `mask`: `[batch, positions]` or None (all).
    An empty mask gives 0 (with a gradient path), not NaN.
    """
    sq = (a.float() - b.float()).pow(2)
    if mask is None:
        return sq.mean()
    weights = mask.to(sq.dtype).unsqueeze(-1)
    return (sq * weights).sum() / (weights.sum() * sq.shape[-1]).clamp_min(1)


@dataclass(frozen=True)
class MethodConfig(abc.ABC):
    """Base of every method's config: frozen, validated on construction (`UnmirageError` before any compute)."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    @abc.abstractmethod
    def validate(self) -> None:
        """Raise `UnmirageError` (via `config_error`) on a bad value."""

    @abc.abstractmethod
    def requires(self) -> frozenset[str]:
        """Names of the keyword arguments the loss function needs for this config (see the module doc)."""

    @property
    def uses_forget(self) -> bool:
        return any(k.startswith("forget") for k in self.requires())

    @property
    def uses_reference(self) -> bool:
        return any("_ref_" in k for k in self.requires())

    @classmethod
    def from_mapping(cls: type[C], data: Mapping[str, Any], source: object | None = None) -> C:
        """Build from a recipe's `method:` table (without `name`); unknown keys, wrong types and bad values
        are one-line errors naming `source` (the recipe file) and the key `method.<field>`."""
        from pydantic import TypeAdapter, ValidationError

        from unmirage.config import format_validation_error

        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise UnmirageError(
                f"method.{unknown[0]}: unknown key for method '{cls.name}' (known: {', '.join(sorted(fields))})",
                file=source,
            )
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if isinstance(value, bool) and bool not in (hints[key], *typing.get_args(hints[key])):
                raise UnmirageError(
                    f"method.{key}: must be a {getattr(hints[key], '__name__', 'value')}, not {str(value).lower()}"
                    f" (method {cls.name})",
                    file=source,
                )
        try:
            return TypeAdapter(cls).validate_python(dict(data), strict=False)
        except ValidationError as err:
            raise UnmirageError(f"method.{format_validation_error(err)}", file=source) from None
        except UnmirageError as err:
            raise UnmirageError(str(err), file=source) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, with the method name."""
        return {"name": self.name, **dataclasses.asdict(self)}


def config_error(config: MethodConfig, field: str, message: str) -> UnmirageError:
    """`method.<field>: <message> (method <name>)`, the form every bad hyper-parameter is reported in."""
    return UnmirageError(f"method.{field}: {message} (method {config.name})")


def check_positive(config: MethodConfig, field: str) -> None:
    value = getattr(config, field)
    if not (math.isfinite(value) and value > 0):
        raise config_error(config, field, f"must be a finite number > 0, got {value!r}")


def check_weight(config: MethodConfig, field: str) -> None:
    value = getattr(config, field)
    if not (math.isfinite(value) and value >= 0):
        raise config_error(config, field, f"must be a finite weight >= 0, got {value!r}")


def check_choice(config: MethodConfig, field: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, field)
    if value not in choices:
        raise config_error(config, field, f"must be one of {', '.join(choices)}, got {value!r}")


def check_any_weight(config: MethodConfig, fields: tuple[str, ...]) -> None:
    if all(getattr(config, f) == 0 for f in fields):
        raise config_error(config, fields[0], f"{', '.join(fields)} are all 0: the loss would be constant")


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the weighted terms."""
    values = list(terms.values())
    out = values[0]
    for value in values[1:]:
        out = out + value
    return out


def detached(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in stats.items()}
