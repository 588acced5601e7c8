"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`), loaded with an image-only processor subclass that needs
no torchvision (`models/processors.py`). Its tiny model: a 2x2-merging vision tower and M-RoPE decoder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from unmirage.errors import UnmirageError
from unmirage.models.families.base import FamilyAdapter, register_family
from unmirage.models.tiny import TinySpec, TinyTokenizer, text_kwargs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Qwen2.5-VL style ChatML with a default system turn.
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's split of head_dim/2 rotary frequencies into (time, height, width), like 64 -> 16/24/24."""
    half = head_dim // 2
    spatial = 3 * half // 8
    return [half - 2 * spatial, spatial, spatial]


@register_family
class Qwen25VLAdapter(FamilyAdapter):
    name: ClassVar[str] = "qwen2_5_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_vl",)
    projector: ClassVar[str | None] = "model.visual.merger"
    vision_tower: ClassVar[str | None] = "model.visual"
    image_placeholder: ClassVar[str] = "<|vision_start|><|image_pad|><|vision_end|>"
    vllm: ClassVar[bool] = True
    tiny_tokenizer: ClassVar[TinyTokenizer | None] = TinyTokenizer(
        special=(
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
        chat_template=QWEN_CHAT_TEMPLATE,
        tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    )

    @classmethod
    def load_processor(cls, source: str, *, trust_remote_code: bool = False) -> Any:
        """The tokenizer with the image-only processor; the chat template from the tokenizer or the folder."""
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        from unmirage.models.processors import Qwen25VLImageProcessor

        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(source)
        saved = Path(source) / "chat_template.jinja"
        return Qwen25VLImageProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=getattr(tokenizer, "chat_template", None)
            or (saved.read_text(encoding="utf-8") if saved.is_file() else None),
        )

    @classmethod
    def check_tiny(cls, spec: TinySpec) -> None:
        if (spec.hidden // spec.heads) % 8:
            raise UnmirageError("tiny qwen2_5_vl: head_dim (hidden/heads) must be a multiple of 8 for M-RoPE")
        step = spec.patch_size * 2
        if spec.image_size % step:
            raise UnmirageError(f"tiny qwen2_5_vl: image_size {spec.image_size} must be a multiple of {step}")

    @classmethod
    def build_tiny_model(cls, spec: TinySpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any]:
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2VLImageProcessorPil,
        )

        from unmirage.models.processors import Qwen25VLImageProcessor

        head_dim = spec.hidden // spec.heads
        vision = dict(
            depth=spec.vision_layers,
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_hidden * 2,
            num_heads=max(1, spec.vision_hidden // 16),
            patch_size=spec.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=spec.patch_size * 4,
            out_hidden_size=spec.hidden,
            fullatt_block_indexes=[spec.vision_layers - 1],
        )
        text = dict(
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section(head_dim),
            },
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            **text_kwargs(spec, tokenizer),
        )
        ids = {
            name: tokenizer.convert_tokens_to_ids(tok)
            for name, tok in (
                ("image_token_id", "<|image_pad|>"),
                ("video_token_id", "<|video_pad|>"),
                ("vision_start_token_id", "<|vision_start|>"),
                ("vision_end_token_id", "<|vision_end|>"),
            )
        }
        config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False, **ids)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        pixels = spec.image_size * spec.image_size
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=pixels,
            max_pixels=pixels,
            patch_size=spec.patch_size,
            merge_size=2,
            temporal_patch_size=2,
        )
        processor = Qwen25VLImageProcessor(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
        )
        return model, processor
