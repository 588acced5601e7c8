"""What unmirage needs to know about a model family, in one small class.

A family adapter knows how to build prompts (the reference's LLaVA "v1" template and the model's own chat
template), where the decoder layers, the projector and the vision tower are (by module name), which token
positions hold the image, and the LoRA target regex that touches only the language model; optionally how
its processor loads, whether the vLLM backend serves it, and its tiny random model for tests.
Adding a family = one file with a subclass decorated with `@register_family` (see llava.py); the package
imports every file in it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn

from unmirage.errors import UnmirageError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, ProcessorMixin

    from unmirage.models.tiny import TinySpec, TinyTokenizer

    Processor = ProcessorMixin | PreTrainedTokenizerBase  # a VLM's processor, a text-only model's tokenizer

V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("v1", "chat")
ANSWER_SENTINEL = "UNMIRAGE_ANSWER_SENTINEL"  # rendered once to locate the answer inside a chat template
LM_LINEAR = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying Hugging Face model under DDP/DeepSpeed/PEFT wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif type(model).__name__.startswith("Peft") and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


class FamilyAdapter:
    """Base adapter. Module names are dotted paths from the top-level `*ForConditionalGeneration` model."""

    name: ClassVar[str] = "base"
    model_types: ClassVar[tuple[str, ...]] = ()
    multimodal: ClassVar[bool] = True
    language_model: ClassVar[str] = "model.language_model"
    projector: ClassVar[str | None] = None
    vision_tower: ClassVar[str | None] = None
    image_placeholder: ClassVar[str] = "<image>"
    lm_linear: ClassVar[tuple[str, ...]] = LM_LINEAR
    vllm: ClassVar[bool] = False
    """Whether the vLLM generation backend serves this family (text-only models always are)."""
    tiny_tokenizer: ClassVar[TinyTokenizer | None] = None
    """The tiny model's tokenizer (`unmirage.models.tiny`); None = this family has no tiny model."""

    # ----- loading and tiny models -----------------------------------------------------------------------------
    @classmethod
    def load_processor(cls, source: str, *, trust_remote_code: bool = False) -> Any:
        """The processor of a saved model of this family; None = transformers' `AutoProcessor` (VLMs) or
        `AutoTokenizer` (text-only models)."""
        return None

    @classmethod
    def check_tiny(cls, spec: TinySpec) -> None:
        """Raise `UnmirageError` on sizes this family's tiny model cannot have."""

    @classmethod
    def build_tiny_model(cls, spec: TinySpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any]:
        """(model, processor) of the tiny random model (after `torch.manual_seed(spec.seed)`)."""
        raise UnmirageError(f"family '{cls.name}' has no tiny model")

    # ----- module lookup -------------------------------------------------------------------------------------
    @property
    def decoder_layers_name(self) -> str:
        """Dotted name of the language model's decoder-layer ModuleList."""
        return f"{self.language_model}.layers"

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers of the language model (layer k's output is `hidden_states[k + 1]`)."""
        try:
            layers = unwrap(model).get_submodule(self.decoder_layers_name)
        except AttributeError:
            raise UnmirageError(
                f"model has no module '{self.decoder_layers_name}' (family '{self.name}')"
            ) from None
        if not isinstance(layers, nn.ModuleList):
            raise UnmirageError(
                f"'{self.decoder_layers_name}' is a {type(layers).__name__}, not a ModuleList"
            )
        return layers

    def decoder_layer(self, model: nn.Module, index: int) -> nn.Module:
        """Decoder layer `index` (0-based); an out-of-range index is a one-line error."""
        layers = self.decoder_layers(model)
        if not 0 <= index < len(layers):
            raise UnmirageError(
                f"layer {index} is out of range: the language model has {len(layers)} layers "
                f"(0..{len(layers) - 1})"
            )
        return layers[index]

    def num_layers(self, model: nn.Module) -> int:
        return len(self.decoder_layers(model))

    def mlp_down_proj(self, index: int) -> str:
        """Module name of the MLP down-projection of decoder layer `index` (RMU's default trainable weights)."""
        return f"{self.decoder_layers_name}.{index}.mlp.down_proj"

    def lora_target_regex(self) -> str:
        """A PEFT `target_modules` regex (full match) hitting every linear layer of the language model only."""
        names = "|".join(re.escape(n) for n in self.lm_linear)
        return rf"^{re.escape(self.decoder_layers_name)}\.\d+\.({names})$"

    def hidden_size(self, model: nn.Module) -> int:
        config = unwrap(model).config
        return getattr(config, "text_config", config).hidden_size

    # ----- image tokens ----------------------------------------------------------------------------------------
    def image_token_id(self, model_or_config: nn.Module | PretrainedConfig) -> int | None:
        """Id of the token that marks image positions in input_ids (None for text-only models)."""
        config = getattr(unwrap(model_or_config), "config", model_or_config)
        value = getattr(config, "image_token_id", None)
        if value is None:
            value = getattr(config, "image_token_index", None)
        return value

    def image_mask(
        self, input_ids: torch.Tensor, model_or_config: nn.Module | PretrainedConfig
    ) -> torch.Tensor:
        """Boolean mask of image-token positions."""
        token = self.image_token_id(model_or_config)
        if token is None:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return input_ids == token

    # ----- prompts ---------------------------------------------------------------------------------------------
    def build_prompt(
        self,
        question: str,
        answer: str | None = None,
        *,
        template: str = "chat",
        processor: Processor | None = None,
        has_image: bool = True,
        system: str | None = None,
    ) -> str:
        """Prompt text for (image, question); with `answer`, the full training text (prompt + answer + end).

        `template="v1"` is the reference protocol's LLaVA v1 prompt; `"chat"` is the model's own chat template.
        The answer part is always the exact suffix of the returned text, so label masks can be taken by length.
        """
        if template == "v1":
            prompt = self.v1_prompt(question, has_image=has_image, system=system)
        elif template == "chat":
            prompt = self.chat_prompt(question, processor=processor, has_image=has_image, system=system)
        else:
            raise UnmirageError(f"unknown prompt template '{template}' (choose from {', '.join(TEMPLATES)})")
        if answer is None:
            return prompt
        return prompt + self.answer_text(answer, template=template, processor=processor)

    def v1_prompt(self, question: str, *, has_image: bool = True, system: str | None = None) -> str:
        """`{system} USER: <image>\\n{question} ASSISTANT:` (the reference's generation prompt)."""
        image = f"{self.image_placeholder}\n" if has_image and self.multimodal else ""
        return f"{V1_SYSTEM if system is None else system} USER: {image}{question} ASSISTANT:"

    def answer_text(self, answer: str, *, template: str, processor: Processor | None = None) -> str:
        """What follows the prompt in a training example: the answer and the end-of-turn marker.

        Under `v1` that is ` {answer}</s>` (the reference). Under `chat` the text around the answer is read off
        the model's own chat template (see `chat_turn_affixes`), so it matches what the model was trained on.
        """
        if template == "v1":
            return f" {answer}</s>"
        prefix, end = self.chat_turn_affixes(processor)
        return f"{prefix}{answer}{end}"

    def end_of_turn(self, processor: Processor) -> str:
        """Text that closes an assistant turn under the model's chat template (e.g. `<|im_end|>\n`)."""
        return self.chat_turn_affixes(processor)[1]

    def chat_turn_affixes(self, processor: Processor) -> tuple[str, str]:
        """(text between the generation prompt and the answer, text that closes the assistant turn).

        Both are read off the chat template by rendering one exchange with a sentinel answer. When the rendered
        turn closes with no special token (llava-hf's LLaVA-1.5 template ends the turn with a space, while the
        model was trained to emit `</s>`), the tokenizer's EOS closes it instead, after stripping trailing
        whitespace. Without a usable template the answer is followed by the EOS alone.
        """
        tokenizer = getattr(processor, "tokenizer", processor)
        eos = (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""
        template = getattr(processor, "chat_template", None)
        if not template:
            return "", eos
        cache = self.__dict__.setdefault("_affix_cache", {})
        key = (id(processor), template, eos)
        if key not in cache:
            cache[key] = self._render_affixes(processor, tokenizer, eos)
        return cache[key]

    def _render_affixes(
        self, processor: Processor, tokenizer: PreTrainedTokenizerBase, eos: str
    ) -> tuple[str, str]:
        question = [{"type": "text", "text": "Q"}]
        answer = [{"type": "text", "text": ANSWER_SENTINEL}]
        if not self.multimodal:
            question, answer = "Q", ANSWER_SENTINEL
        messages = [{"role": "user", "content": question}]
        try:
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            full = processor.apply_chat_template(
                [*messages, {"role": "assistant", "content": answer}], tokenize=False
            )
        except Exception:  # a template that refuses this shape of conversation: fall back to the EOS
            return "", eos
        where = full.rfind(ANSWER_SENTINEL)
        if where < 0 or not full.startswith(prompt) or where < len(prompt):
            return "", eos
        prefix, end = full[len(prompt) : where], full[where + len(ANSWER_SENTINEL) :]
        specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
        if not any(token in end for token in specials):
            end = end.rstrip() + eos
        return prefix, end

    def chat_messages(self, question: str, *, has_image: bool, system: str | None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "image"}] if has_image and self.multimodal else []
        content.append({"type": "text", "text": question})
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        messages.append({"role": "user", "content": content})
        return messages

    def chat_prompt(
        self, question: str, *, processor: Processor, has_image: bool = True, system: str | None = None
    ) -> str:
        """The model's own chat template with the generation prompt appended."""
        if processor is None:
            raise UnmirageError("the 'chat' template needs the model's processor or tokenizer")
        if getattr(processor, "chat_template", None) is None:
            raise UnmirageError(f"this {type(processor).__name__} has no chat template; use template 'v1'")
        messages = self.chat_messages(question, has_image=has_image, system=system)
        if not self.multimodal:  # plain tokenizers take string contents
            messages = [{"role": m["role"], "content": m["content"][-1]["text"]} for m in messages]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


FAMILIES: dict[str, type[FamilyAdapter]] = {}
A = TypeVar("A", bound=type[FamilyAdapter])


def register_family(cls: A) -> A:
    """Class decorator: register a family adapter under its `name` (a second class with that name, or one
    claiming another family's `model_types`, is an error)."""
    existing = FAMILIES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"model family '{cls.name}' is already registered")
    for other in FAMILIES.values():
        shared = set(other.model_types) & set(cls.model_types)
        if other is not cls and shared:
            raise ValueError(f"model_type {sorted(shared)[0]!r} already belongs to family '{other.name}'")
    FAMILIES[cls.name] = cls
    return cls
