"""Fallback for any other `AutoModelForImageTextToText` model: module names are found by inspection."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from unmirage.errors import UnmirageError
from unmirage.models.families.base import FamilyAdapter, register_family, unwrap

_LM_NAMES = ("model.language_model", "language_model.model", "model.text_model", "language_model")
_PROJECTOR_NAMES = (
    "model.multi_modal_projector",
    "model.visual.merger",
    "model.connector",
    "multi_modal_projector",
    "model.mm_projector",
)
_VISION_NAMES = ("model.vision_tower", "model.visual", "model.vision_model", "vision_tower", "vision_model")


def _first_existing(model: nn.Module, names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            continue
        return name
    return None


@register_family
class GenericAdapter(FamilyAdapter):
    """Finds the language model, projector and vision tower under their usual names in transformers 5."""

    name: ClassVar[str] = "generic"

    def __init__(self, model: nn.Module | None = None) -> None:
        self.language_model = "model.language_model"
        self.projector = None
        self.vision_tower = None
        if model is not None:
            self.bind(model)

    def bind(self, model: nn.Module) -> GenericAdapter:
        """Resolve module names on a concrete model."""
        base = unwrap(model)
        language_model = _first_existing(base, _LM_NAMES)
        if language_model is None:
            raise UnmirageError(
                f"cannot find the language model of {type(base).__name__}; "
                "add a family adapter for it (src/unmirage/models/families/)"
            )
        self.language_model = language_model
        self.projector = _first_existing(base, _PROJECTOR_NAMES)
        self.vision_tower = _first_existing(base, _VISION_NAMES)
        return self
