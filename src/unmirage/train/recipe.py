"""The unlearning recipe (YAML): model, data, method, train (TrainingArguments), output_dir, LoRA, reference.

Everything is validated before a model is loaded: unknown keys, wrong types, method hyper-parameters (via
the method registry) and `train:` keys (against the installed `transformers.TrainingArguments` fields).
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

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


def load_recipe(
    path: str | os.PathLike | None, overrides: Iterable[str] = (), base: Mapping[str, Any] | None = None
) -> tuple[Recipe, MethodConfig]:
    """Read (from `path`, on top of `base`), override and validate a recipe, including its method and
    `train:` keys."""
    recipe = load_config(Recipe, path, overrides, base=base)
    source = path or "<command line>"
    config = recipe.method_config(source)
    check_train_keys(recipe.train, source)
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
