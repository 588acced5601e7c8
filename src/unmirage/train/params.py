"""Which parameters train: name patterns, method defaults, and LoRA set-up.

A pattern selects a parameter when it matches the parameter's full dotted name (`re.fullmatch`), or when it
names a module that holds the parameter (`model.multi_modal_projector` selects all of its weights). Names
are those of the Hugging Face model itself (no DDP/DeepSpeed/PEFT prefix). Every pattern must select at
least one parameter: a typo is an error before any compute, not a silent no-op.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from torch import nn

from unmirage.errors import UnmirageError
from unmirage.methods.base import MethodConfig
from unmirage.models.families import FamilyAdapter, unwrap

if TYPE_CHECKING:
    from unmirage.train.recipe import LoraSection


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(rf"(?:{pattern})(?:\..*)?")
    except re.error as err:
        raise UnmirageError(
            f"'{pattern}' is not a valid regular expression ({err})", field="trainable"
        ) from None


def select_parameters(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """Parameter names selected by any of `patterns`; a pattern that selects nothing is an error."""
    names = list(names)
    if not patterns:
        raise UnmirageError("the list of trainable-parameter patterns is empty", field="trainable")
    chosen: set[str] = set()
    for pattern in patterns:
        regex = _compile(pattern)
        hits = {n for n in names if regex.fullmatch(n)}
        if not hits:
            example = names[0] if names else "(none)"
            raise UnmirageError(
                f"pattern '{pattern}' selects no parameter (names look like '{example}')", field="trainable"
            )
        chosen |= hits
    return [n for n in names if n in chosen]


def default_patterns(config: MethodConfig, family: FamilyAdapter, model: nn.Module) -> list[str]:
    """Full-parameter defaults: the method's own (`MethodConfig.default_trainable`, e.g. RMU's projector and
    MLP down-projections), else everything except the vision tower (as LLaVA does)."""
    patterns = config.default_trainable(family, model)
    if patterns is not None:
        return patterns
    if family.vision_tower:
        return [rf"(?!{re.escape(family.vision_tower)}\.).*"]
    return [".*"]


def freeze_except(model: nn.Module, names: Iterable[str]) -> int:
    """Set `requires_grad` True exactly for `names` (of the unwrapped model); return the trainable count."""
    keep = set(names)
    count = 0
    for name, param in unwrap(model).named_parameters():
        param.requires_grad_(name in keep)
        count += param.numel() if name in keep else 0
    return count


def trainable_names(model: nn.Module) -> list[str]:
    """Names (of the unwrapped model) of the parameters that currently require gradients."""
    return [n for n, p in unwrap(model).named_parameters() if p.requires_grad]


def apply_lora(model: nn.Module, family: FamilyAdapter, lora: LoraSection) -> nn.Module:
    """Wrap `model` with PEFT LoRA adapters on the language model's linear layers (family regex) unless
    `lora.target_modules` says otherwise; `lora.train_projector` also trains the projector (kept beside the
    original, so the disabled-adapter reference still uses the original projector)."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules or family.lora_target_regex()
    modules_to_save = None
    if lora.train_projector:
        if not family.projector:
            raise UnmirageError("lora.train_projector: this model family has no projector", field="lora")
        modules_to_save = [family.projector]
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        bias="none",
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise UnmirageError(f"LoRA: {str(err).splitlines()[0]}", field="lora.target_modules") from None
    return peft_model
