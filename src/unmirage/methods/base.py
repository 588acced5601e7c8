"""Shared pieces of the unlearning methods: what a method needs, per-example NLL statistics, validated configs,
hooks, loss outputs.

A method is a config dataclass plus a pure loss function on tensors. The config says what the loss needs
(`MethodConfig.needs()`, a typed `Needs`); the trainer computes exactly that and passes it as keyword
arguments, by these names:

- `forget_nll`, `retain_nll`: `SequenceNLL` of the trained model on the forget / retain batch;
- `forget_ref_nll`, `retain_ref_nll`: the same for the frozen reference model;
- `forget_hidden`, `retain_hidden`, `forget_ref_hidden`, `retain_ref_hidden`: output hidden states of decoder
  layer `Needs.layer`, `[batch, positions, width]`, with `forget_mask` / `retain_mask` (`[batch, positions]`,
  bool, or None for every position) saying which positions count (`Needs.mask`);
- every tensor named in `Needs.inputs`, made once before training by `MethodConfig.extra_inputs` (RMU's
  control vector).

Besides `needs()`, a config can override hooks the trainer calls without knowing the method:
`default_trainable` (parameter patterns of a full-parameter run), `check_model` (errors before any compute)
and `extra_inputs`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import torch
import torch.nn.functional as F

from unmirage.data.collate import IGNORE_INDEX
from unmirage.errors import UnmirageError

if TYPE_CHECKING:
    from torch import nn

    from unmirage.models.families import FamilyAdapter

SIDES = ("forget", "retain")
# Which positions of a hidden state count: every one (padding and image tokens included), attended non-image
# positions, or labelled answer positions.
POSITION_MASKS = ("all", "text", "answer")

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


def answer_positions(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """`[batch, seq]` bool: the positions whose logits score a labelled token (position t predicts label t+1;
    the last position predicts nothing). What `logits_to_keep` gets so the LM head runs at these only."""
    keep = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    keep[:, :-1] = labels[:, 1:] != ignore_index
    return keep


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> SequenceNLL:
    """Causal-LM NLL per example: position t predicts label t+1; positions labelled `ignore_index` are skipped.

    `logits` are either every position's, `[batch, seq, vocab]`, or only those of `answer_positions(labels)`,
    `[answer tokens, vocab]` in row-major order (what `unmirage.train.forward.forward` returns: the LM head
    applied at those positions only). Only the answer positions' logits are turned into log-probabilities
    (in float32), so memory grows with the number of answer tokens, not with the sequence length.
    """
    keep = answer_positions(labels, ignore_index)
    if logits.dim() == 3 and labels.shape == logits.shape[:2]:
        logits = logits[keep]
    elif logits.dim() != 2 or labels.dim() != 2 or logits.shape[0] != int(keep.sum()):
        raise ValueError(
            f"logits {tuple(logits.shape)} are neither every position's nor the answer positions' of "
            f"labels {tuple(labels.shape)}"
        )
    targets = labels[:, 1:][keep[:, :-1]]
    token_nll = F.cross_entropy(logits.float(), targets, reduction="none")
    rows = keep.nonzero()[:, 0]
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
class SideNeeds:
    """What a loss needs computed on one side's batch (`forget` or `retain`)."""

    nll: bool = False
    """`SequenceNLL` of the trained model (`<side>_nll`)."""
    ref_nll: bool = False
    """`SequenceNLL` of the frozen reference (`<side>_ref_nll`)."""
    hidden: bool = False
    """The trained model's output of decoder layer `Needs.layer` and the position mask (`<side>_hidden`,
    `<side>_mask`)."""
    ref_hidden: bool = False
    """The reference's output of that layer (`<side>_ref_hidden`)."""

    @property
    def any(self) -> bool:
        return self.nll or self.ref_nll or self.hidden or self.ref_hidden


@dataclass(frozen=True)
class Needs:
    """Everything a method's loss needs, for one config (see the module doc for the argument names)."""

    forget: SideNeeds = SideNeeds()
    retain: SideNeeds = SideNeeds()
    layer: int | None = None
    """Decoder layer (0-based) whose output the `hidden` quantities are; required when any is asked for."""
    mask: str = "all"
    """Positions of the hidden states that count: one of `POSITION_MASKS`."""
    inputs: tuple[str, ...] = ()
    """Names of the tensors `MethodConfig.extra_inputs` makes before training."""

    def __post_init__(self) -> None:
        hidden = any(s.hidden or s.ref_hidden for s in (self.forget, self.retain))
        if hidden and self.layer is None:
            raise ValueError("needs: hidden states need a layer")
        if self.mask not in POSITION_MASKS:
            raise ValueError(f"needs: unknown position mask {self.mask!r}")

    def side(self, name: str) -> SideNeeds:
        """`forget` or `retain`."""
        return self.forget if name == "forget" else self.retain

    @property
    def uses_forget(self) -> bool:
        return self.forget.any

    @property
    def uses_reference(self) -> bool:
        return any(s.ref_nll or s.ref_hidden for s in (self.forget, self.retain))

    @property
    def reference_hidden(self) -> bool:
        """Whether the reference's activations are needed (not only its NLL statistics)."""
        return self.forget.ref_hidden or self.retain.ref_hidden

    def arguments(self) -> frozenset[str]:
        """The keyword arguments the trainer passes to the loss function."""
        names: set[str] = set(self.inputs)
        for side in SIDES:
            want = self.side(side)
            for flag, name in (
                (want.nll, "nll"),
                (want.ref_nll, "ref_nll"),
                (want.hidden, "hidden"),
                (want.hidden, "mask"),
                (want.ref_hidden, "ref_hidden"),
            ):
                if flag:
                    names.add(f"{side}_{name}")
        return frozenset(names)


@dataclass
class MethodContext:
    """What `MethodConfig.extra_inputs` may use: the starting model (before any update), its family, the run's
    seed and forget examples, and two functions of the trainer: `collate(examples)` -> a batch on the model's
    device, and `hidden(batch, layer)` -> decoder layer `layer`'s output on it (no gradients, eval mode)."""

    model: nn.Module
    family: FamilyAdapter
    seed: int
    forget: Sequence[Any] | None
    collate: Callable[[list[Any]], dict[str, Any]]
    hidden: Callable[[dict[str, Any], int], torch.Tensor]


@dataclass(frozen=True)
class MethodInputs:
    """Tensors made once before training (passed to every loss call by name) and values for the manifest."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


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
    def needs(self) -> Needs:
        """What the loss function needs for this config (see the module doc)."""

    @property
    def uses_forget(self) -> bool:
        return self.needs().uses_forget

    @property
    def uses_reference(self) -> bool:
        return self.needs().uses_reference

    def default_trainable(self, family: FamilyAdapter, model: nn.Module) -> list[str] | None:
        """Parameter patterns (see `unmirage.train.params`) a full-parameter run trains when the recipe gives
        no `trainable:`; None = the trainer's default (everything except the vision tower)."""
        return None

    def check_model(self, family: FamilyAdapter, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Raise `UnmirageError` when this config cannot run on `model` (before any compute)."""

    def extra_inputs(self, context: MethodContext) -> MethodInputs:
        """The tensors named in `needs().inputs`, made once from the starting model before training."""
        return MethodInputs()

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
                    f"method.{key}: must be a {type_name(hints[key])}, not {str(value).lower()} (method {cls.name})",
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


def type_name(hint: Any) -> str:
    """`float`, `float or auto` (a union with a literal), ... for error messages."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(str(a) for a in args)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    return getattr(hint, "__name__", "value")


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


def add_retain_ce(
    terms: dict[str, torch.Tensor],
    stats: dict[str, torch.Tensor],
    weight: float,
    retain_nll: SequenceNLL | None,
) -> None:
    """The retain cross-entropy term shared by most methods: with a nonzero `weight`, add
    `ce_retain = weight * CE_theta(retain batch)` (batch-mean token NLL) to `terms` and the unweighted NLL as
    `nll_retain` to `stats`."""
    if weight:
        nll = retain_nll.batch_mean()
        terms["ce_retain"] = weight * nll
        stats["nll_retain"] = nll
