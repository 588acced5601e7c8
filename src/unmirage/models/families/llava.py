"""LLaVA-1.5 as packaged by llava-hf (`LlavaForConditionalGeneration`)."""

from __future__ import annotations

from typing import Any, ClassVar

from unmirage.models.families.base import FamilyAdapter


class LlavaAdapter(FamilyAdapter):
    name: ClassVar[str] = "llava"
    model_types: ClassVar[tuple[str, ...]] = ("llava",)
    projector: ClassVar[str | None] = "model.multi_modal_projector"
    vision_tower: ClassVar[str | None] = "model.vision_tower"
    image_placeholder: ClassVar[str] = "<image>"

    def answer_text(self, answer: str, *, template: str, processor: Any = None) -> str:
        """LLaVA closes an assistant turn with `</s>` after a space-separated answer under both templates."""
        return f" {answer}</s>"
