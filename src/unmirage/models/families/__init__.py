"""Family adapters, found by name or by a model's `config.model_type`.

Every module of this package is imported here; each registers its adapter with `@register_family`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from unmirage.errors import UnmirageError
from unmirage.models.families.base import FAMILIES, V1_SYSTEM, FamilyAdapter, register_family, unwrap

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from unmirage.models.families.causal import CausalLMAdapter  # noqa: E402 (fallbacks of family_for)
from unmirage.models.families.generic import GenericAdapter  # noqa: E402

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig


def get_family(name: str) -> FamilyAdapter:
    """The adapter registered under `name`."""
    if name not in FAMILIES:
        raise UnmirageError(f"unknown model family '{name}' (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]()


def family_class(model_type: str | None) -> type[FamilyAdapter] | None:
    """The registered family that claims `model_type`, or None."""
    return next((cls for cls in FAMILIES.values() if model_type in cls.model_types), None)


def family_for(model: nn.Module | PretrainedConfig) -> FamilyAdapter:
    """The adapter for a loaded model (or its config): by `model_type`, else causal or generic."""
    base = unwrap(model) if hasattr(model, "config") else None
    config = base.config if base is not None else model
    model_type = getattr(config, "model_type", None)
    cls = family_class(model_type)
    if cls is not None:
        return cls()
    if getattr(config, "vision_config", None) is None:
        return CausalLMAdapter()
    if base is None:
        raise UnmirageError(f"no family adapter for model_type '{model_type}' without the model itself")
    return GenericAdapter(base)


__all__ = [
    "FAMILIES",
    "V1_SYSTEM",
    "FamilyAdapter",
    "family_class",
    "family_for",
    "get_family",
    "register_family",
    "unwrap",
]
