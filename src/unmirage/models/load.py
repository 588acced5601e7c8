"""Load any Hugging Face VLM (or plain causal LM) with its processor and family adapter."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unmirage.errors import UnmirageError
from unmirage.models.families import FamilyAdapter, family_class, family_for, get_family, unwrap

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
TINY_PREFIX = "tiny-"
PARTIAL_WEIGHTS_ENV = "UNMIRAGE_PARTIAL_WEIGHTS"
"""Set to 1 to load a model whose weight files lack some of its tensors (those keep random values; recorded)."""


@dataclass
class LoadedModel:
    """A model, its processor (or tokenizer for text-only models) and its family adapter."""

    model: Any
    processor: Any
    family: FamilyAdapter
    source: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def multimodal(self) -> bool:
        return self.family.multimodal

    @property
    def device(self) -> torch.device:
        return next(unwrap(self.model).parameters()).device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """'auto' (the checkpoint's dtype), a torch dtype, or one of float32/bfloat16/float16 (fp32/bf16/fp16)."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UnmirageError(f"unknown dtype '{dtype}' (choose from auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def resolve_device(device: str = "auto") -> str | None:
    """The `device_map` for `load_model`: 'auto' -> 'cuda' when a GPU is there, else None (CPU);
    'cpu' -> None; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else None
    return None if device == "cpu" else device


def load_model(
    source: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    adapter: str | os.PathLike | None = None,
    trainable_adapter: bool = False,
    trust_remote_code: bool = False,
    family: str | None = None,
    tiny_sizes: dict[str, Any] | None = None,
    partial_weights: bool | None = None,
) -> LoadedModel:
    """Load a model by Hub id or local folder (safetensors only), or build `tiny-llava` / `tiny-qwen2_5_vl`.

    Vision-language models load through `AutoModelForImageTextToText`, other models through
    `AutoModelForCausalLM`. `adapter` applies a PEFT (LoRA) adapter folder on top. `trust_remote_code` stays
    off unless the caller asks for it. Weight files that miss some of the model's tensors, or hold tensors
    it does not have, are an error unless `partial_weights` (default: the `UNMIRAGE_PARTIAL_WEIGHTS`
    environment variable); what was missing is then recorded in `info["weights"]`.
    """
    source = str(source)
    torch_dtype = resolve_dtype(dtype)
    if partial_weights is None:
        partial_weights = os.environ.get(PARTIAL_WEIGHTS_ENV, "") not in ("", "0")
    weights: dict[str, Any] = {"built": "tiny"} if source.startswith(TINY_PREFIX) else {}
    if source.startswith(TINY_PREFIX) and not Path(source).exists():
        from unmirage.models.tiny import build_tiny

        model, processor = build_tiny(source[len(TINY_PREFIX) :], **(tiny_sizes or {}))
        if isinstance(torch_dtype, torch.dtype):
            model = model.to(torch_dtype)
        if device_map not in (None, "cpu"):
            model = model.to(device_map if isinstance(device_map, str) and device_map != "auto" else "cuda")
    else:
        model, processor, weights = _load_pretrained(
            source, torch_dtype, device_map, attn_implementation, trust_remote_code, partial_weights
        )
    adapter_info = None
    if adapter is not None:
        model = _apply_adapter(model, adapter, trainable_adapter)
        adapter_info = str(adapter)
    fam = get_family(family) if family else family_for(model)
    if fam.name == "generic" and hasattr(fam, "bind"):
        fam.bind(model)
    return LoadedModel(
        model=model,
        processor=processor,
        family=fam,
        source=source,
        info={
            "dtype": str(next(unwrap(model).parameters()).dtype),
            "adapter": adapter_info,
            "weights": weights,
        },
    )


def source_is_multimodal(source: str | os.PathLike, *, trust_remote_code: bool = False) -> bool:
    """Whether a model source is a vision-language model, read from its config without loading weights.

    `tiny-*` names are VLMs; a config that cannot be read counts as multimodal (callers then ask for images);
    a local path that does not exist (it cannot be a Hub id: `org/name`) is an error.
    """
    source = str(source)
    if source.startswith(TINY_PREFIX) and not Path(source).exists():
        return True
    if looks_like_local_path(source) and not Path(source).exists():
        raise UnmirageError("model folder not found", file=source)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return True
    return _is_image_text_model(config)


def looks_like_local_path(source: str) -> bool:
    """A model source that can only be a local path: absolute, relative with ./ ../ ~, or with two or more
    path separators (a Hub id is `name` or `org/name`)."""
    return (
        source.startswith(("/", "./", "../", "~"))
        or source.count("/") >= 2
        or os.sep != "/"
        and os.sep in source
    )


def _is_image_text_model(config: PretrainedConfig) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def check_safetensors(folder: str | os.PathLike, pattern: str = "*.safetensors") -> None:
    """Open every safetensors file of a folder (header and sizes); a corrupt or truncated one is an error."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(folder).glob(pattern)):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError, ValueError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise UnmirageError(f"not a valid safetensors file ({reason[:160]})", file=file) from None


def _load_pretrained(
    source: str,
    dtype: torch.dtype | str,
    device_map: Any,
    attn_implementation: str | None,
    trust_remote_code: bool,
    partial_weights: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    if looks_like_local_path(source) and not Path(source).exists():
        raise UnmirageError("model folder not found", file=source)
    if Path(source).is_file():
        raise UnmirageError("a model is a folder (config.json and *.safetensors), not a file", file=source)
    if (
        Path(source).exists()
        and not any(Path(source).glob("*.safetensors"))
        and not any(Path(source).glob("*.safetensors.index.json"))
    ):
        raise UnmirageError(
            "no *.safetensors weights in this folder (unmirage loads safetensors only)", file=source
        )
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UnmirageError(f"cannot load a model config: {str(err).splitlines()[0]}", file=source) from None
    if Path(source).is_dir():
        check_safetensors(source)
    auto = AutoModelForImageTextToText if _is_image_text_model(config) else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model, info = auto.from_pretrained(source, output_loading_info=True, **kwargs)
    weights = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    weights = {k: [str(x) for x in v] for k, v in weights.items() if v}
    if weights and not partial_weights:
        found = "; ".join(f"{len(v)} {k.replace('_keys', '')} (e.g. {v[0]})" for k, v in weights.items())
        raise UnmirageError(
            f"the weight files do not match the model: {found}; set {PARTIAL_WEIGHTS_ENV}=1 to load it "
            "anyway (those tensors keep random values)",
            file=source,
        )
    if weights:
        weights["partial"] = True
    processor = load_processor(source, config.model_type, trust_remote_code=trust_remote_code)
    return model.eval(), processor, weights


def load_processor(source: str, model_type: str, *, trust_remote_code: bool = False) -> Any:
    """The model's processor (tokenizer for text-only models): the family's own loader
    (`FamilyAdapter.load_processor`, e.g. Qwen2.5-VL's image-only processor), else transformers' auto class."""
    from transformers import AutoProcessor, AutoTokenizer

    family = family_class(model_type)
    processor = family.load_processor(source, trust_remote_code=trust_remote_code) if family else None
    if processor is not None:
        return processor
    if _is_image_text_model(type("C", (), {"model_type": model_type})):
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _apply_adapter(model: PreTrainedModel, adapter: str | os.PathLike, trainable: bool) -> Any:
    from peft import PeftModel

    adapter = Path(adapter)
    if not adapter.is_dir():
        raise UnmirageError("LoRA adapter folder not found", file=adapter)
    if not (adapter / "adapter_model.safetensors").is_file():
        pickled = [p.name for p in adapter.glob("*.bin")] + [p.name for p in adapter.glob("*.pt")]
        what = (
            f"only pickle weights ({', '.join(sorted(pickled))})"
            if pickled
            else "no adapter_model.safetensors"
        )
        raise UnmirageError(f"the adapter folder holds {what}; unmirage loads safetensors only", file=adapter)
    check_safetensors(adapter, "adapter_model.safetensors")
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
