"""Family adapters, found by name or by a model's `config.model_type`."""

from __future__ import annotations

from typing import Any

from unmirage.errors import UnmirageError
from unmirage.models.families.base import V1_SYSTEM, FamilyAdapter, unwrap
from unmirage.models.families.causal import CausalLMAdapter
from unmirage.models.families.generic import GenericAdapter
from unmirage.models.families.llava import LlavaAdapter
from unmirage.models.families.qwen2_5_vl import Qwen25VLAdapter

FAMILIES: dict[str, type[FamilyAdapter]] = {
    cls.name: cls for cls in (LlavaAdapter, Qwen25VLAdapter, CausalLMAdapter, GenericAdapter)
}


def get_family(name: str) -> FamilyAdapter:
    """The adapter registered under `name`."""
    if name not in FAMILIES:
        raise UnmirageError(f"unknown model family '{name}' (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]()


def family_for(model: Any) -> FamilyAdapter:
    """The adapter for a loaded model (or its config): by `model_type`, else causal or generic."""
    base = unwrap(model) if hasattr(model, "config") else None
    config = base.config if base is not None else model
    model_type = getattr(config, "model_type", None)
    for cls in FAMILIES.values():
        if model_type in cls.model_types:
            return cls()
    if getattr(config, "vision_config", None) is None:
        return CausalLMAdapter()
    if base is None:
        raise UnmirageError(f"no family adapter for model_type '{model_type}' without the model itself")
    return GenericAdapter(base)


__all__ = ["FAMILIES", "V1_SYSTEM", "FamilyAdapter", "family_for", "get_family", "unwrap"]
