"""LLaVA-1.5 as packaged by llava-hf (`LlavaForConditionalGeneration`), and LLaVA-class models composed by
`unmirage models compose` (any causal LM with a CLIP tower): the chat turn's end follows the chat template,
the reference's v1 prompt ends every answer with `</s>`."""

from __future__ import annotations

from typing import ClassVar

from unmirage.models.families.base import FamilyAdapter


class LlavaAdapter(FamilyAdapter):
    name: ClassVar[str] = "llava"
    model_types: ClassVar[tuple[str, ...]] = ("llava",)
    projector: ClassVar[str | None] = "model.multi_modal_projector"
    vision_tower: ClassVar[str | None] = "model.vision_tower"
    image_placeholder: ClassVar[str] = "<image>"
