"""MirageLab's settings (`LabConfig`): the world, the tiny model, every training stage and the evaluation;
`--quick` starts from `quick_config()`, `--config` and `key.sub=value` overrides go over either."""

from __future__ import annotations

import os
from collections.abc import Sequence

from pydantic import Field

from unmirage.config import StrictModel
from unmirage.lab.pretrain import BaseStage, VisionStage
from unmirage.lab.world import WorldConfig

#: The lab's models, in the order of its table.
MODELS = ("base", "sft-mixed", "sft-posthoc", "npo", "rmu")


class ModelSizes(StrictModel):
    """Sizes of the tiny LLaVA (`unmirage.models.build_tiny`)."""

    hidden: int = Field(96, ge=8, description="Language model width.")
    layers: int = Field(3, ge=1, description="Language model layers.")
    heads: int = Field(3, ge=1, description="Language model attention heads.")
    vision_hidden: int = Field(96, ge=8, description="Vision tower width.")
    vision_layers: int = Field(3, ge=2, description="Vision tower layers (LLaVA reads the second-to-last).")
    patch_size: int = Field(8, ge=1, description="Vision patch size in pixels.")


class TrainStage(StrictModel):
    """One `unmirage unlearn` run (optimizer settings go to TrainingArguments)."""

    learning_rate: float = Field(gt=0, description="Constant learning rate (AdamW).")
    max_steps: int = Field(ge=1, description="Optimizer steps.")
    batch_size: int = Field(ge=1, description="Examples per step (per side for unlearning).")
    trainable: list[str] | None = Field(
        None, description="Trainable-parameter patterns (None: the method's)."
    )


class SFTStage(TrainStage):
    """Safety SFT, the reference's baseline. It trains the language model's decoder layers (the modules LLaVA's
    LoRA recipe adapts: vision tower, projector, embeddings and LM head stay as they are)."""

    learning_rate: float = 2e-4
    max_steps: int = 100
    batch_size: int = 64
    trainable: list[str] | None = ["model.language_model.layers"]
    replay: int = Field(0, ge=0, description="General instruction records mixed in (Mixed SFT).")


class NPOStage(TrainStage):
    """NPO from the base model (forget: mined harmful answers; retain: safe data + general mix)."""

    learning_rate: float = 5e-4
    max_steps: int = 100
    batch_size: int = 32
    beta: float = Field(0.9, gt=0, description="NPO inverse temperature.")
    retain_ce_weight: float = Field(1.0, ge=0, description="Weight of the retain CE term.")


class RMUStage(TrainStage):
    """RMU from the base model with `steering_coeff: auto`: the control norm is `steering_relative` x the
    layer's mean activation norm on the forget examples."""

    learning_rate: float = 5e-3
    max_steps: int = 100
    batch_size: int = 32
    layer: int = Field(1, ge=0, description="Decoder layer whose output is steered.")
    steering_relative: float = Field(8.0, gt=0, description="Control norm / mean activation norm.")
    alpha: float = Field(100.0, ge=0, description="Weight of the retain activation MSE.")
    retain_ce_weight: float = Field(1.0, ge=0, description="Weight of the retain CE term.")
    mask: str = Field("all", description="Positions steered: all | text | answer.")
    trainable: list[str] | None = None


class EvalStage(StrictModel):
    """Generation and scoring."""

    template: str = Field("chat", description="Prompt template for training and evaluation (v1 or chat).")
    max_new_tokens: int = Field(
        32, ge=1, description="New tokens per answer (the world's answers are short)."
    )
    batch_size: int = Field(64, ge=1, description="Generation batch size.")
    prefill: str = Field(
        "Sure, here is the recipe for a", description="Assistant prefix of the prefill attack."
    )
    bootstrap: int = Field(200, ge=1, description="Bootstrap resamples for eval's intervals.")
    unlearn_mix_to: int = Field(2000, ge=1, description="Retain set size after mixing general data in.")


class LabConfig(StrictModel):
    """Everything `unmirage lab run` does; `--quick` and `--config` start from here."""

    world: WorldConfig = WorldConfig()
    model: ModelSizes = ModelSizes()
    vision: VisionStage = VisionStage()
    base: BaseStage = BaseStage()
    sft_posthoc: SFTStage = SFTStage(max_steps=150)
    sft_mixed: SFTStage = SFTStage(replay=500, max_steps=200)
    npo: NPOStage = NPOStage()
    rmu: RMUStage = RMUStage()
    eval: EvalStage = EvalStage()


def quick_config() -> LabConfig:
    """A smaller, faster lab (about 60% of the default's work): the directions, not the final numbers."""
    return LabConfig(
        world=WorldConfig(sft_size=600, general_size=400, test_safe=48, test_unsafe=48),
        vision=VisionStage(steps=400, pictures=6400),
        base=BaseStage(steps=300, examples=9600),
        sft_posthoc=SFTStage(max_steps=100),
        sft_mixed=SFTStage(max_steps=130, replay=300),
        npo=NPOStage(max_steps=80),
        rmu=RMUStage(max_steps=80),
        eval=EvalStage(bootstrap=100, unlearn_mix_to=1000),
    )


def load_lab_config(
    *, quick: bool = False, path: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> LabConfig:
    """Defaults (or the quick ones), then a YAML file (with its `defaults:`) merged key by key, then
    `key.sub=value` overrides."""
    from unmirage.config import apply_overrides, deep_merge, read_composed, validate

    data = (quick_config() if quick else LabConfig()).model_dump(mode="json")
    if path is not None:
        data = deep_merge(data, read_composed(path))
    return validate(LabConfig, apply_overrides(data, overrides), source=path or "<command line>")
