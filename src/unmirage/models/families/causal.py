"""Plain text-only causal language models (`AutoModelForCausalLM`: Llama, Qwen2, SmolLM2, ...)."""

from __future__ import annotations

from typing import ClassVar

from unmirage.models.families.base import FamilyAdapter, register_family


@register_family
class CausalLMAdapter(FamilyAdapter):
    name: ClassVar[str] = "causal"
    multimodal: ClassVar[bool] = False
    language_model: ClassVar[str] = "model"
    vllm: ClassVar[bool] = True
