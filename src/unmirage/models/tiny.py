"""Tiny models of the real classes, with random weights, for tests and demos.

`build_tiny("llava")` gives a `LlavaForConditionalGeneration` (CLIP vision tower + Llama) and
`build_tiny("qwen2_5_vl")` a `Qwen2_5_VLForConditionalGeneration`, each with a byte-level BPE tokenizer
trained offline on a corpus shipped in this package, the image token, a chat template and the matching
processor. `save_tiny` writes a folder that reloads with plain `from_pretrained`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from unmirage.errors import UnmirageError

TINY_FAMILIES = ("llava", "qwen2_5_vl")

LLAVA_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

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


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny model. `hidden` is the language model's width; the vision tower uses `vision_hidden`."""

    family: str = "llava"
    layers: int = 2
    hidden: int = 64
    heads: int = 2
    vision_layers: int = 2
    vision_hidden: int = 32
    image_size: int = 32
    patch_size: int = 8
    vocab_size: int = 1024
    seed: int = 0

    def validate(self) -> None:
        if self.family not in TINY_FAMILIES:
            raise UnmirageError(
                f"unknown tiny family '{self.family}' (choose from {', '.join(TINY_FAMILIES)})"
            )
        for name in (
            "layers",
            "hidden",
            "heads",
            "vision_layers",
            "vision_hidden",
            "image_size",
            "patch_size",
        ):
            if getattr(self, name) < 1:
                raise UnmirageError(f"tiny model: {name} must be positive (got {getattr(self, name)})")
        if self.hidden % self.heads:
            raise UnmirageError(f"tiny model: hidden {self.hidden} is not divisible by heads {self.heads}")
        if (self.hidden // self.heads) % 8 and self.family == "qwen2_5_vl":
            raise UnmirageError("tiny qwen2_5_vl: head_dim (hidden/heads) must be a multiple of 8 for M-RoPE")
        if self.family == "llava" and self.vision_layers < 2:
            raise UnmirageError(
                "tiny llava: vision_layers must be >= 2 (LLaVA reads the second-to-last layer)"
            )
        step = self.patch_size * (2 if self.family == "qwen2_5_vl" else 1)
        if self.image_size % step:
            raise UnmirageError(
                f"tiny {self.family}: image_size {self.image_size} must be a multiple of {step}"
            )


def corpus_path() -> Path:
    """The small English corpus the tiny tokenizers are trained on (shipped with the package)."""
    return Path(str(resources.files("unmirage.models") / "assets" / "corpus.txt"))


@functools.lru_cache(maxsize=8)
def _train_tokenizer_json(family: str, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special = LLAVA_SPECIAL if family == "llava" else QWEN_SPECIAL
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>" if family == "llava" else None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([str(corpus_path())], trainer)
    if family == "llava":  # Llama tokenizers prepend <s>
        bos = tokenizer.token_to_id("<s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    return tokenizer.to_str()


def build_tokenizer(family: str = "llava", vocab_size: int = 1024) -> Any:
    """A `PreTrainedTokenizerFast` with byte-level BPE trained offline on the shipped corpus."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_train_tokenizer_json(family, vocab_size))
    if family == "llava":
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"},
            padding_side="left",
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            padding_side="left",
            chat_template=QWEN_CHAT_TEMPLATE,
        )
    tokenizer.model_max_length = 4096
    return tokenizer


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's split of head_dim/2 rotary frequencies into (time, height, width), like 64 -> 16/24/24."""
    half = head_dim // 2
    spatial = 3 * half // 8
    return [half - 2 * spatial, spatial, spatial]


def build_tiny(family: str = "llava", **sizes: Any) -> tuple[Any, Any]:
    """Build (model, processor) of a tiny random model of the real class. See `TinySpec` for the sizes."""
    spec = TinySpec(family=family, **sizes)
    spec.validate()
    tokenizer = build_tokenizer(family, spec.vocab_size)
    torch.manual_seed(spec.seed)
    if family == "llava":
        return _build_llava(spec, tokenizer)
    return _build_qwen(spec, tokenizer)


def _text_kwargs(spec: TinySpec, tokenizer: Any) -> dict[str, Any]:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.hidden * 2,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _build_llava(spec: TinySpec, tokenizer: Any) -> tuple[Any, Any]:
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
    text = LlamaConfig(bos_token_id=tokenizer.bos_token_id, **_text_kwargs(spec, tokenizer))
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
    _set_generation_defaults(model, tokenizer)
    return model, processor


def _build_qwen(spec: TinySpec, tokenizer: Any) -> tuple[Any, Any]:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

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
            "mrope_section": _mrope_section(head_dim),
        },
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        **_text_kwargs(spec, tokenizer),
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
        min_pixels=pixels, max_pixels=pixels, patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen25VLImageProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    _set_generation_defaults(model, tokenizer)
    return model, processor


def _set_generation_defaults(model: Any, tokenizer: Any) -> None:
    config = model.generation_config
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.do_sample = False


def save_tiny(out: str | os.PathLike, family: str = "llava", **sizes: Any) -> Path:
    """Build a tiny model and save model (safetensors) + processor to `out`; returns the folder."""
    model, processor = build_tiny(family, **sizes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    from unmirage.runs import normal_permissions

    normal_permissions(out)
    return out
