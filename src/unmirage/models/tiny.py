"""Tiny models of the real classes, with random weights, for tests and demos.

Each family that has one declares its tiny model in its own file (`models/families/`): `tiny_tokenizer` (a
`TinyTokenizer`: special tokens and chat template) and `build_tiny_model(spec, tokenizer)`.
`build_tiny("llava")` gives a `LlavaForConditionalGeneration` (CLIP vision tower + Llama) and
`build_tiny("qwen2_5_vl")` a `Qwen2_5_VLForConditionalGeneration`, each with a byte-level BPE tokenizer
trained offline on a corpus shipped in this package, the image token, a chat template and the matching
processor. `save_tiny` writes a folder that reloads with plain `from_pretrained`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unmirage.errors import UnmirageError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from unmirage.models.families import FamilyAdapter


@dataclass(frozen=True)
class TinyTokenizer:
    """How a family's tiny tokenizer is built: BPE special tokens, the unknown token, a start token the
    post-processor prepends (Llama tokenizers), the `PreTrainedTokenizerFast` token arguments and the chat
    template."""

    special: tuple[str, ...]
    chat_template: str
    tokens: dict[str, Any] = field(default_factory=dict)
    unk: str | None = None
    prepend_bos: str | None = None


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
        """General size checks, then the family's own (`FamilyAdapter.check_tiny`)."""
        family = tiny_family(self.family)
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
        family.check_tiny(self)


def tiny_families() -> list[str]:
    """Names of the registered families that have a tiny model, sorted."""
    from unmirage.models.families import FAMILIES

    return sorted(name for name, cls in FAMILIES.items() if cls.tiny_tokenizer is not None)


def tiny_family(name: str) -> type[FamilyAdapter]:
    """The family class of a tiny model, or a one-line error listing those that have one."""
    from unmirage.models.families import FAMILIES

    cls = FAMILIES.get(name)
    if cls is None or cls.tiny_tokenizer is None:
        raise UnmirageError(f"unknown tiny family '{name}' (choose from {', '.join(tiny_families())})")
    return cls


def corpus_path() -> Path:
    """The small English corpus the tiny tokenizers are trained on (shipped with the package)."""
    return Path(str(resources.files("unmirage.models") / "assets" / "corpus.txt"))


@functools.lru_cache(maxsize=8)
def _train_tokenizer_json(family: str, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    spec = tiny_family(family).tiny_tokenizer
    tokenizer = Tokenizer(models.BPE(unk_token=spec.unk))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.special),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([str(corpus_path())], trainer)
    if spec.prepend_bos is not None:
        bos, bos_id = spec.prepend_bos, tokenizer.token_to_id(spec.prepend_bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tokenizer.to_str()


def build_tokenizer(family: str = "llava", vocab_size: int = 1024) -> Any:
    """A `PreTrainedTokenizerFast` with byte-level BPE trained offline on the shipped corpus."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = tiny_family(family).tiny_tokenizer
    backend = Tokenizer.from_str(_train_tokenizer_json(family, vocab_size))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, padding_side="left", chat_template=spec.chat_template, **spec.tokens
    )
    tokenizer.model_max_length = 4096
    return tokenizer


def build_tiny(family: str = "llava", **sizes: Any) -> tuple[Any, Any]:
    """Build (model, processor) of a tiny random model of the real class. See `TinySpec` for the sizes."""
    spec = TinySpec(family=family, **sizes)
    spec.validate()
    tokenizer = build_tokenizer(family, spec.vocab_size)
    torch.manual_seed(spec.seed)
    model, processor = tiny_family(family).build_tiny_model(spec, tokenizer)
    set_generation_defaults(model, tokenizer)
    return model, processor


def text_kwargs(spec: TinySpec, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The language model's config arguments shared by every tiny family (Llama-style decoder)."""
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


def set_generation_defaults(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
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
