"""The unlearning recipe (YAML): model, data, method, train (TrainingArguments), output_dir, LoRA, reference.

Everything is validated before a model is loaded: unknown keys, wrong types, method hyper-parameters (via
the method registry) and `train:` keys (against the installed `transformers.TrainingArguments` fields).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from unmirage.config import StrictModel, load_config
from unmirage.errors import UnmirageError
from unmirage.methods import MethodConfig, get_method
from unmirage.train.reference import check_request

# TrainingArguments fields the runner owns (set from other recipe keys or fixed by the design).
RESERVED_TRAIN_KEYS = {
    "output_dir": "use the top-level output_dir",
    "remove_unused_columns": "the paired forget/retain batches need every column",
    "push_to_hub": "runs do not upload while training; upload the finished output_dir yourself "
    "(`hf upload REPO_ID OUTPUT_DIR`, see docs/unlearning.md)",
}

# Defaults applied under `train:` unless the recipe sets them.
TRAIN_DEFAULTS: dict[str, Any] = {"report_to": ["tensorboard"], "logging_steps": 1}


class DataSection(StrictModel):
    """Where the examples come from and how they become token sequences."""

    forget: str | None = Field(None, description="forget file (not needed by sft)")
    retain: str = Field(description="retain file (for sft: the training file)")
    image_root: str | None = None
    placeholder_images: bool = False
    template: Literal["v1", "chat"] = "v1"
    max_length: int = Field(2048, gt=0)
    epoch_over: Literal["retain", "forget", "max"] = "retain"
    limit: int | None = Field(
        None, gt=0, description="use only the first N records of each file (quick runs)"
    )

    @model_validator(mode="after")
    def _images_one_way(self) -> DataSection:
        if self.image_root is not None and self.placeholder_images:
            raise ValueError("give either image_root or placeholder_images: true, not both")
        return self


class LoraSection(StrictModel):
    """PEFT LoRA; the reference recipe: r 128, alpha 256, dropout 0.05, every linear layer of the LM."""

    r: int = Field(128, gt=0)
    alpha: float = Field(256, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] | None = None
    train_projector: bool = False


class Recipe(StrictModel):
    """One unlearning (or SFT) run."""

    model: str
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    tiny_sizes: dict[str, Any] | None = None
    data: DataSection
    method: dict[str, Any]
    train: dict[str, Any] = Field(default_factory=dict)
    output_dir: str
    lora: LoraSection | None = None
    trainable: list[str] | None = None
    reference: Literal["auto", "precomputed", "adapter", "swap", "copy"] = "auto"
    reference_batch_size: int | None = Field(None, gt=0)
    gradient_checkpointing: bool = False
    merge: bool = False
    plot: bool = True
    save_model: bool = Field(True, description="write the trained model/adapter (benchmarks turn it off)")

    @field_validator("output_dir")
    @classmethod
    def _output_dir_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder (it is empty)")
        return value

    @field_validator("method")
    @classmethod
    def _method_has_name(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("name"), str):
            raise ValueError("needs a 'name' (one of the registered methods)")
        return value

    def method_config(self, source: object | None = None) -> MethodConfig:
        """The validated method config (unknown method, key or bad value: one-line error)."""
        return get_method(self.method["name"]).make_config(self.method, source=source)

    def training_arguments(self, **extra: Any) -> dict[str, Any]:
        """`train:` merged over the defaults, checked against `TrainingArguments`' fields."""
        check_train_keys(self.train)
        values = {**TRAIN_DEFAULTS, **self.train}
        if self.gradient_checkpointing:
            values["gradient_checkpointing"] = True
        if values.get("gradient_checkpointing"):
            values.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
        if "dataloader_pin_memory" not in values:  # pinning only helps (and only works) with an accelerator
            import torch

            values["dataloader_pin_memory"] = torch.cuda.is_available()
        values.update(output_dir=self.output_dir, remove_unused_columns=False, **extra)
        # YAML reads a bare `no` as false: `save_strategy: no` means the strategy "no"
        return {k: "no" if k.endswith("_strategy") and v is False else v for k, v in values.items()}


def make_training_arguments(recipe: Recipe, source: object | None = None) -> Any:
    """`transformers.TrainingArguments` for the recipe; a value it rejects is a one-line error."""
    from transformers import TrainingArguments

    try:
        return TrainingArguments(**recipe.training_arguments())
    except (ValueError, TypeError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnmirageError(f"train: {message}", file=source) from None


def training_argument_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def check_train_keys(train: dict[str, Any], source: object | None = None) -> None:
    """Every `train:` key must be a TrainingArguments field that the runner does not own."""
    known = training_argument_fields()
    for key in train:
        if key in RESERVED_TRAIN_KEYS:
            raise UnmirageError(f"train.{key}: {RESERVED_TRAIN_KEYS[key]}", file=source)
        if key not in known:
            close = sorted(k for k in known if k.startswith(key[:4]))[:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnmirageError(f"train.{key}: not a transformers.TrainingArguments field{hint}", file=source)


# The range each numeric TrainingArguments field must lie in, by its meaning (checked before any compute).
POSITIVE = ("learning_rate", "adam_epsilon", "num_train_epochs", "logging_steps", "save_steps", "eval_steps")
NON_NEGATIVE = (
    "weight_decay",
    "max_grad_norm",
    "warmup_steps",
    "label_smoothing_factor",
    "dataloader_num_workers",
)
AT_LEAST_ONE = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "eval_accumulation_steps",
    "save_total_limit",
)
UNIT_INTERVAL = ("adam_beta1", "adam_beta2", "warmup_ratio")
SEEDS = ("seed", "data_seed")


def _allowed_types(hint: Any) -> set[type] | None:
    """The plain types a TrainingArguments annotation allows (enums count as str); None when not plain."""
    import enum

    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    allowed: set[type] = set()
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is typing.Literal:
            allowed |= {type(v) for v in typing.get_args(option)}
        elif isinstance(origin, type) and issubclass(origin, enum.Enum):
            allowed.add(str)
        elif origin in (bool, int, float, str, dict, list, type(None)):
            allowed.add(origin)
        else:
            return None
    return allowed


def _typed_value(key: str, value: Any, allowed: set[type], source: object) -> Any:
    """`value` checked against the field's types (a YAML number written as text, like 1e-5, is a number)."""
    if isinstance(value, str) and float in allowed and str not in allowed:
        try:
            value = float(value)
        except ValueError:
            raise UnmirageError(f"train.{key}: must be a number (got {value!r})", file=source) from None
    kind = type(value)
    ok = kind in allowed or (kind is int and float in allowed)
    if kind is bool:
        ok = bool in allowed
    if not ok:
        names = " or ".join(sorted("null" if t is type(None) else t.__name__ for t in allowed))
        raise UnmirageError(f"train.{key}: must be {names} (got {value!r})", file=source)
    if isinstance(value, float) and not math.isfinite(value):
        raise UnmirageError(f"train.{key}: must be a finite number (got {value!r})", file=source)
    return value


def _check_range(key: str, value: Any, source: object) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    problem = None
    if key in POSITIVE and not value > 0:
        problem = "must be > 0"
    elif key in NON_NEGATIVE and value < 0:
        problem = "must be >= 0"
    elif key in AT_LEAST_ONE and value < 1:
        problem = "must be at least 1"
    elif key in UNIT_INTERVAL and not 0 <= value < 1:
        problem = "must be in [0, 1)"
    elif key in SEEDS and not 0 <= value < 2**32:
        problem = "must be an integer in [0, 2**32)"
    elif key == "max_steps" and value != -1 and value < 1:
        problem = "must be at least 1 (or -1: train for num_train_epochs)"
    if problem:
        raise UnmirageError(f"train.{key}: {problem} (got {value!r})", file=source)


def check_report_to(value: Any, source: object) -> None:
    """Every `report_to` integration must be installed (a missing one fails only when training starts)."""
    from transformers.integrations import get_available_reporting_integrations

    names = [value] if isinstance(value, str) else list(value or [])
    available = set(get_available_reporting_integrations())
    for name in names:
        if name not in ("none", "all") and name not in available:
            raise UnmirageError(
                f"train.report_to: '{name}' is not installed here (pip install {name}, or leave it out of "
                f"report_to; installed: {', '.join(sorted(available)) or 'none'})",
                file=source,
            )


def check_train_values(train: dict[str, Any], source: object | None = None) -> dict[str, Any]:
    """Every `train:` value checked against its TrainingArguments field's type and meaning; returns the
    values with numbers written as text turned into numbers."""
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    checked = {}
    for key, value in train.items():
        allowed = _allowed_types(hints.get(key))
        if allowed is not None:
            if key.endswith("_strategy") and value is False:
                value = "no"  # YAML reads a bare `no` as false
            value = _typed_value(key, value, allowed, source)
        _check_range(key, value, source)
        checked[key] = value
    values = {**TRAIN_DEFAULTS, **checked}
    check_report_to(values.get("report_to"), source)
    for key in ("bf16", "fp16"):
        if values.get(key) and not values.get("use_cpu"):
            import torch

            if not torch.cuda.is_available():
                raise UnmirageError(
                    f"train.{key}: this machine has no GPU for {key} training; set train.{key}=false "
                    "(or train.use_cpu=true for CPU autocast)",
                    file=source,
                )
    return checked


def load_recipe(
    path: str | os.PathLike | None, overrides: Iterable[str] = (), base: Mapping[str, Any] | None = None
) -> tuple[Recipe, MethodConfig]:
    """Read (from `path`, on top of `base`), override and validate a recipe, including its method and
    `train:` keys."""
    recipe = load_config(Recipe, path, overrides, base=base)
    source = path or "<command line>"
    config = recipe.method_config(source)
    check_train_keys(recipe.train, source)
    recipe.train = check_train_values(recipe.train, source)
    # Build TrainingArguments once to validate `train:` values, then drop it: under ZeRO-3 a live instance
    # would make model loading shard parameters, and the runner builds its own after loading the model.
    make_training_arguments(recipe, source)
    gc.collect()
    if recipe.data.forget is None and config.uses_forget:
        raise UnmirageError(f"data.forget: method '{config.name}' needs a forget file", file=source)
    check_request(recipe.reference, config, lora=recipe.lora is not None)
    if recipe.merge and recipe.lora is None:
        raise UnmirageError("merge: needs a LoRA run (lora: in the recipe)", file=source)
    if recipe.lora is not None and recipe.trainable is not None:
        raise UnmirageError(
            "trainable: patterns apply to full-parameter runs; with lora: use lora.target_modules "
            "and lora.train_projector",
            file=source,
        )
    return recipe, config


def preflight(recipe: Recipe, config: MethodConfig, source: object | None = None) -> None:
    """What would fail only after the model loads: missing data files or image root, an output_dir that is a
    file, a vision-language model without images. Run by `unlearn --check` and before every run."""
    from unmirage.models.load import source_is_multimodal

    data = recipe.data
    files = {"data.retain": data.retain}
    if config.uses_forget:
        files["data.forget"] = data.forget
    for key, path in files.items():
        if path is not None and not Path(path).is_file():
            raise UnmirageError(f"{key}: file not found: {path}", file=source)
    if data.image_root is not None and not Path(data.image_root).is_dir():
        raise UnmirageError(f"data.image_root: not a folder: {data.image_root}", file=source)
    out = Path(recipe.output_dir)
    if out.exists() and not out.is_dir():
        raise UnmirageError(f"output_dir: {out} is a file, not a folder", file=source)
    if data.image_root is None and not data.placeholder_images and source_is_multimodal(recipe.model):
        raise UnmirageError(
            "data.image_root is required for a vision-language model (or placeholder_images: true)",
            file=source,
        )
