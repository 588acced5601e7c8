"""LLaVA-1.5 as packaged by llava-hf (`LlavaForConditionalGeneration`), and LLaVA-class models composed by
`unmirage models compose` (any causal LM with a CLIP tower): the chat turn's end follows the chat template,
the reference's v1 prompt ends every answer with `</s>`. Its tiny model: a CLIP tower and a Llama decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from unmirage.errors import UnmirageError
from unmirage.models.families.base import FamilyAdapter, register_family
from unmirage.models.tiny import TinySpec, TinyTokenizer, text_kwargs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# llava-hf style: "USER: <image>\n{question} ASSISTANT: {answer}</s>"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{{ ' ' }}"
    "{% elif message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{{ ' ' }}"
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}{{ '</s>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@register_family
class LlavaAdapter(FamilyAdapter):
    name: ClassVar[str] = "llava"
    model_types: ClassVar[tuple[str, ...]] = ("llava",)
    projector: ClassVar[str | None] = "model.multi_modal_projector"
    vision_tower: ClassVar[str | None] = "model.vision_tower"
    image_placeholder: ClassVar[str] = "<image>"
    vllm: ClassVar[bool] = True
    tiny_tokenizer: ClassVar[TinyTokenizer | None] = TinyTokenizer(
        special=("<unk>", "<s>", "</s>", "<pad>", "<image>"),
        chat_template=LLAVA_CHAT_TEMPLATE,
        tokens={
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "extra_special_tokens": {"image_token": "<image>"},
        },
        unk="<unk>",
        prepend_bos="<s>",  # Llama tokenizers prepend <s>
    )

    @classmethod
    def check_tiny(cls, spec: TinySpec) -> None:
        if spec.vision_layers < 2:
            raise UnmirageError(
                "tiny llava: vision_layers must be >= 2 (LLaVA reads the second-to-last layer)"
            )
        if spec.image_size % spec.patch_size:
            raise UnmirageError(
                f"tiny llava: image_size {spec.image_size} must be a multiple of {spec.patch_size}"
            )

    @classmethod
    def build_tiny_model(cls, spec: TinySpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any]:
        from transformers import (
            CLIPImageProcessorPil,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        vision = CLIPVisionConfig(
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_hidden * 2,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=max(1, spec.vision_hidden // 32),
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            projection_dim=spec.vision_hidden,
        )
        text = LlamaConfig(bos_token_id=tokenizer.bos_token_id, **text_kwargs(spec, tokenizer))
        image_tokens = (spec.image_size // spec.patch_size) ** 2
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            image_seq_length=image_tokens,
            tie_word_embeddings=False,
        )
        model = LlavaForConditionalGeneration(config).eval()
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": spec.image_size},
            crop_size={"height": spec.image_size, "width": spec.image_size},
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=spec.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
        return model, processor
