"""Wrap a pretrained causal LM as the language model of a LLaVA-class VLM (`LlavaForConditionalGeneration`).

`compose_vlm` takes any causal LM folder (e.g. SmolLM2 converted by `unmirage models convert-gguf`) and adds:

- a CLIP vision tower: a small random one (`vision="tiny"`) or a given CLIP / CLIP-vision folder;
- a two-layer projector whose output starts (almost) constant: the second linear layer is drawn with a tiny
  standard deviation and its bias is the LM's own embedding of its BOS token (or zero), so that untrained image
  tokens barely disturb the pretrained LM (docs/smol.md measures both choices);
- an `<image>` token in the LM's tokenizer (embeddings resized; the new token can never be generated);
- a `LlavaProcessor` with a `CLIPImageProcessorPil`, and a chat template derived from the LM's own one: the
  same turns, with the image placeholder inside the user turn (`<image>\\n` before the question).

The output folder loads with `load_model(DIR)` (family `llava`) and with plain transformers `from_pretrained`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unmirage.errors import UnmirageError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from unmirage.models.load import LoadedModel

IMAGE_TOKEN = "<image>"
TINY_VISION = "tiny"

# Turns list-of-parts message contents into plain strings (image parts become the placeholder), so that a
# text-only LM's chat template renders multimodal conversations unchanged otherwise.
CONTENT_TO_TEXT = (
    "{%- set _unm = namespace(messages=[]) -%}"
    "{%- for _m in messages -%}"
    "{%- if _m['content'] is string -%}"
    "{%- set _unm.messages = _unm.messages + [_m] -%}"
    "{%- else -%}"
    "{%- set _txt = namespace(s='') -%}"
    "{%- for _part in _m['content'] -%}"
    "{%- if _part['type'] == 'image' -%}{%- set _txt.s = _txt.s + '" + IMAGE_TOKEN + "\\n' -%}"
    "{%- elif _part['type'] == 'text' -%}{%- set _txt.s = _txt.s + _part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set _unm.messages = _unm.messages + [{'role': _m['role'], 'content': _txt.s}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = _unm.messages -%}"
)


@dataclass(frozen=True)
class VisionSpec:
    """Sizes of the random CLIP vision tower built for `vision="tiny"` (ignored for a vision folder).

    The default 32-pixel image in 16-pixel patches gives 4 image tokens: with placeholder images they carry no
    information, and fewer untrained tokens disturb the pretrained LM less (see docs/smol.md).
    """

    image_size: int = 32
    patch_size: int = 16
    layers: int = 2
    hidden: int = 64
    heads: int = 2

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise UnmirageError(f"vision tower: {name} must be positive (got {value})")
        if self.layers < 2:
            raise UnmirageError("vision tower: layers must be >= 2 (LLaVA reads the second-to-last layer)")
        if self.image_size % self.patch_size:
            raise UnmirageError(
                f"vision tower: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden % self.heads:
            raise UnmirageError(f"vision tower: hidden {self.hidden} is not divisible by heads {self.heads}")


def derive_chat_template(lm_template: str) -> str:
    """The LM's chat template, taught to render image parts as `<image>\\n` inside their (user) turn."""
    return CONTENT_TO_TEXT + lm_template


def _vision_tower(vision: str, spec: VisionSpec) -> tuple[Any, Any, str]:
    """(CLIPVisionModel, CLIPImageProcessorPil, description) for 'tiny' or a CLIP / CLIP-vision folder."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    if vision == TINY_VISION:
        spec.validate()
        config = CLIPVisionConfig(
            hidden_size=spec.hidden,
            intermediate_size=spec.hidden * 4,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            projection_dim=spec.hidden,
        )
        model = CLIPVisionModel(config)
        description = "random (untrained) CLIP vision tower"
    else:
        path = Path(vision)
        if not path.is_dir():
            raise UnmirageError(f"vision must be '{TINY_VISION}' or a CLIP model folder", file=vision)
        try:
            model = CLIPVisionModel.from_pretrained(str(path), dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise UnmirageError(
                f"cannot load a CLIP vision tower: {str(err).splitlines()[0]}", file=path
            ) from None
        config = model.config
        description = f"CLIP vision tower from {path}"
        if config.num_hidden_layers < 2:
            raise UnmirageError(
                "the vision tower needs >= 2 layers (LLaVA reads the second-to-last)", file=path
            )
        if (path / "preprocessor_config.json").is_file():
            return model.eval(), CLIPImageProcessorPil.from_pretrained(str(path)), description
    size = config.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return model.eval(), processor, description


def _extend_tokenizer(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add `<image>` as a special token (if missing); returns its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
        )
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def anchor_token(
    tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig, projector_bias: str
) -> str | None:
    """The token whose embedding the image features start at: `zero` = none, `bos` = the LM's BOS token
    (None when it has none), anything else = that token, which must be in the vocabulary."""
    if projector_bias == "zero":
        return None
    if projector_bias == "bos":
        if tokenizer.bos_token:
            return tokenizer.bos_token
        bos_id = getattr(config, "bos_token_id", None)
        return tokenizer.convert_ids_to_tokens(bos_id) if isinstance(bos_id, int) else None
    if projector_bias not in tokenizer.get_vocab():
        raise UnmirageError(
            f"projector bias: '{projector_bias}' is not a token of the language model (or bos/zero)"
        )
    return projector_bias


def _init_projector(projector: torch.nn.Module, std: float, bias: torch.Tensor | None) -> None:
    """Second projector layer ~ N(0, std^2), bias = `bias` (zero if None): image features start at the bias."""
    with torch.no_grad():
        if std > 0:
            projector.linear_2.weight.normal_(0.0, std)
        else:
            projector.linear_2.weight.zero_()
        if bias is not None:
            projector.linear_2.bias.copy_(bias)
        else:
            projector.linear_2.bias.zero_()


def compose_vlm(
    language_model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    vision: str = TINY_VISION,
    vision_spec: VisionSpec | None = None,
    projector_std: float = 1e-4,
    projector_bias: str = "bos",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build a LLaVA-class VLM from a causal LM folder and a vision tower; save it to `out` (see module doc)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from unmirage.models.convert import prepare_output_dir, publish_dir, staging_dir
    from unmirage.models.load import load_model
    from unmirage.runs import write_manifest

    if projector_std < 0:
        raise UnmirageError(f"projector_std must be >= 0 (got {projector_std})")
    out = prepare_output_dir(out, overwrite)
    loaded = load_model(language_model, dtype="float32")
    if loaded.multimodal:
        raise UnmirageError(
            f"the language model is already a {loaded.family.name} VLM; give a plain causal LM",
            file=language_model,
        )
    lm, tokenizer = loaded.model, loaded.tokenizer
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise UnmirageError("the language model's tokenizer has no chat template", file=language_model)
    image_token_id = _extend_tokenizer(tokenizer)
    if lm.get_input_embeddings().num_embeddings < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    torch.manual_seed(seed)
    vision_model, image_processor, vision_description = _vision_tower(vision, vision_spec or VisionSpec())
    vcfg = vision_model.config
    image_tokens = (vcfg.image_size // vcfg.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vcfg.to_dict(),
        text_config=lm.config.to_dict(),
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=image_tokens,
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )
    torch.manual_seed(seed)
    vlm = LlavaForConditionalGeneration(config).eval()
    base = getattr(lm, lm.base_model_prefix)
    vlm.model.language_model.load_state_dict(base.state_dict())
    vlm.lm_head.load_state_dict(lm.lm_head.state_dict())
    vlm.model.vision_tower.load_state_dict(vision_model.state_dict())
    anchor = anchor_token(tokenizer, lm.config, projector_bias)
    bias = (
        None if anchor is None else lm.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(anchor)]
    )
    _init_projector(vlm.model.multi_modal_projector, projector_std, bias)
    _set_generation_config(vlm, lm, tokenizer, image_token_id)
    chat_template = derive_chat_template(template)
    tokenizer.chat_template = chat_template
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vcfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    staging = staging_dir(out)
    try:
        vlm.save_pretrained(staging)
        processor.save_pretrained(staging)
        write_manifest(
            staging,
            command="models compose",
            config={
                "language_model": str(language_model),
                "vision": vision,
                "vision_spec": asdict(vision_spec or VisionSpec()) if vision == TINY_VISION else None,
                "projector_std": projector_std,
                "projector_bias": projector_bias,
            },
            seed=seed,
            vision_tower=vision_description,
            projector=(
                "untrained; image features start at "
                + (f"the embedding of {anchor!r}" if anchor is not None else "zero")
            ),
            projector_anchor_token=anchor,
            image_token_id=image_token_id,
            image_tokens=image_tokens,
        )
        publish_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def _set_generation_config(
    vlm: PreTrainedModel, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, image_token_id: int
) -> None:
    """The LM's generation defaults, greedy, and the image token suppressed (it must never be generated)."""
    generation = vlm.generation_config
    for key, value in lm.generation_config.to_diff_dict().items():
        if key != "transformers_version":
            setattr(generation, key, value)
    generation.do_sample = False
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = lm.generation_config.eos_token_id or tokenizer.eos_token_id
    generation.suppress_tokens = [image_token_id]


@dataclass
class FidelityReport:
    """How much a composed VLM (with a placeholder image) departs from its plain LM on text prompts.

    `greedy_identical`: fraction of prompts whose greedy answers are token-for-token identical;
    `mean_common_prefix`: mean number of leading answer tokens that agree; `mean_kl`: mean KL(LM || VLM) of the
    next-token distributions over the LM's own greedy answer tokens (teacher-forced), in nats;
    `top1_agreement`: fraction of those positions where both models' argmax agree.
    """

    prompts: int
    new_tokens: int
    greedy_identical: float
    mean_common_prefix: float
    mean_kl: float
    top1_agreement: float
    examples: list[dict[str, str]]


def text_fidelity(
    language_model: LoadedModel, vlm: LoadedModel, questions: list[str], *, max_new_tokens: int = 32
) -> FidelityReport:
    """Compare a plain LM (`LoadedModel`, family causal) with its composed VLM on `questions`, one at a time.

    The VLM sees each question with a placeholder (grey) image in the user turn, through the same chat
    template; both decode greedily.
    """
    from unmirage.placeholder import placeholder_image, placeholder_size

    lm_tok, vlm_proc = language_model.tokenizer, vlm.processor
    identical, prefixes, kls, agree, total, examples = 0, [], [], 0, 0, []
    for question in questions:
        lm_prompt = language_model.family.build_prompt(question, template="chat", processor=lm_tok)
        vlm_prompt = vlm.family.build_prompt(question, template="chat", processor=vlm_proc)
        lm_in = lm_tok(lm_prompt, return_tensors="pt", add_special_tokens=False)
        vlm_in = vlm_proc(
            images=[placeholder_image(placeholder_size(vlm_proc))],
            text=[vlm_prompt],
            return_tensors="pt",
            add_special_tokens=False,
        )
        with torch.no_grad():
            lm_out = language_model.model.generate(**lm_in, max_new_tokens=max_new_tokens, do_sample=False)
            vlm_out = vlm.model.generate(**vlm_in, max_new_tokens=max_new_tokens, do_sample=False)
        a = lm_out[0, lm_in["input_ids"].shape[1] :].tolist()
        b = vlm_out[0, vlm_in["input_ids"].shape[1] :].tolist()
        identical += a == b
        prefixes.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
        answer = torch.tensor([a])
        with torch.no_grad():
            lm_logits = language_model.model(input_ids=torch.cat([lm_in["input_ids"], answer], 1)).logits
            vlm_logits = vlm.model(
                input_ids=torch.cat([vlm_in["input_ids"], answer], 1), pixel_values=vlm_in["pixel_values"]
            ).logits
        n = len(a)
        p = torch.log_softmax(lm_logits[0, -n - 1 : -1].float(), -1)
        q = torch.log_softmax(vlm_logits[0, -n - 1 : -1].float(), -1)[:, : p.shape[-1]]
        kls.append(float((p.exp() * (p - q)).sum(-1).mean()))
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        total += n
        examples.append(
            {
                "question": question,
                "lm": lm_tok.decode(a, skip_special_tokens=True),
                "vlm": lm_tok.decode(b, skip_special_tokens=True),
            }
        )
    count = max(len(questions), 1)
    return FidelityReport(
        prompts=len(questions),
        new_tokens=max_new_tokens,
        greedy_identical=identical / count,
        mean_common_prefix=sum(prefixes) / count,
        mean_kl=sum(kls) / count,
        top1_agreement=agree / max(total, 1),
        examples=examples,
    )
