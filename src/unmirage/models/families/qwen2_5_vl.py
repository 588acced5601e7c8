"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`)."""

from __future__ import annotations

from typing import ClassVar

from unmirage.models.families.base import FamilyAdapter


class Qwen25VLAdapter(FamilyAdapter):
    name: ClassVar[str] = "qwen2_5_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_vl",)
    projector: ClassVar[str | None] = "model.visual.merger"
    vision_tower: ClassVar[str | None] = "model.visual"
    image_placeholder: ClassVar[str] = "<|vision_start|><|image_pad|><|vision_end|>"
