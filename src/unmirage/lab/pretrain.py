"""MirageLab's own stages: pretrain the vision tower, then teach the base model the world.

These two stages stand in for what happened to LLaVA-1.5 before anyone fine-tuned it for safety (CLIP
pretraining, then LLaVA's instruction tuning), so they are lab-specific; everything after them goes through
the toolkit's commands.

1. **Vision pretraining.** The tiny CLIP tower learns to classify the object's kind and colour from its patch
   tokens (the layer LLaVA feeds to the projector): a linear head on the flattened patch tokens, trained with
   warm-up and cosine decay. Without this stage a tiny LLaVA trained end to end ignored the image.
2. **Base training.** The tiny LLaVA (vision tower frozen, as in LLaVA's instruction tuning) learns to answer
   every recipe question about every kind, hazards included, with the opening that the first word asks for,
   plus colour questions. Batches go through the toolkit's training `Collator` and prompt template, so the
   base model sees exactly the token layout the later commands use.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from unmirage.config import StrictModel
from unmirage.lab.parallel import all_sum, rank_and_size, share, sum_gradients
from unmirage.lab.world import World, WorldExample

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from unmirage.models import LoadedModel


class VisionStage(StrictModel):
    """Vision-tower pretraining (kind + colour classification from the patch tokens)."""

    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Pictures per step.")
    learning_rate: float = Field(4e-3, gt=0, description="Peak learning rate (AdamW, warm-up then cosine).")
    warmup: float = Field(0.1, ge=0, lt=1, description="Warm-up share of the steps.")
    pictures: int = Field(12800, ge=1, description="Distinct pictures drawn for this stage.")


class BaseStage(StrictModel):
    """Base-model training on the whole world (all kinds, all first words)."""

    steps: int = Field(500, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Examples per step.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW, cosine decay).")
    examples: int = Field(16000, ge=1, description="Distinct (picture, question, answer) examples.")
    colour_share: float = Field(0.15, ge=0, le=1, description="Share of colour questions.")
    train_vision: bool = Field(False, description="Also train the vision tower (LLaVA keeps it frozen).")


def cosine_factor(step: int, steps: int, warmup: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup * steps`, then cosine decay to 0."""
    warm = warmup * steps
    if warm and step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * step / steps))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """`steps` batches of indices into range(n), seeded reshuffled passes."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            block = list(range(n))
            rng.shuffle(block)
            order.extend(block)
        yield order[:batch_size]
        del order[:batch_size]


def answer_loss(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], denominator: float | None = None
) -> torch.Tensor:
    """The model's causal-LM loss (mean cross-entropy over the labelled tokens), with the LM head applied to
    the labelled positions only: the same value as `model(**batch).loss` for a fraction of the head's FLOPs
    (answers are about a quarter of a lab sequence). With `denominator` (the labelled tokens of the whole
    batch, in data-parallel training), the cross-entropy summed over this batch's tokens, divided by it."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs).last_hidden_state[:, :-1]
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[keep]).float()
    if denominator is None:
        return torch.nn.functional.cross_entropy(logits, targets[keep])
    return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum") / denominator


def feature_layer_tokens(model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision tower's patch tokens at the layer LLaVA feeds to its projector (CLS dropped)."""
    config = model.config
    tower = model.model.vision_tower
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states[config.vision_feature_layer]
    return hidden[:, 1:] if config.vision_feature_select_strategy == "default" else hidden


def step_flop(modules: Sequence[torch.nn.Module], loss_of: Callable[..., torch.Tensor]) -> int:
    """FLOPs (matmuls and attention, forward and backward) of `loss_of(*modules).backward()`, counted on
    copies of the modules: the counter can change kernel choices, so the training run's own numbers stay
    untouched."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    twins = copy.deepcopy(list(modules))
    with FlopCounterMode(display=False) as counter:
        loss_of(*twins).backward()
    return counter.get_total_flops()


def pretrain_vision(
    loaded: LoadedModel,
    world: World,
    stage: VisionStage,
    *,
    seed: int,
    progress: bool = True,
    keep_head: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train the vision tower to recognise kind and colour; returns the final training accuracies, the loop's
    `seconds` and its `train_flop` (the first step's counted FLOPs x steps: every step has the same shape).
    `keep_head["head"]` receives the trained linear head (kind logits first, then colour)."""
    model = loaded.model
    rng = random.Random(f"vision-{world.config.seed}-{seed}")
    specs = [world.sample_object(rng) for _ in range(stage.pictures)]
    pixels = loaded.processor.image_processor(images=[world.render(s) for s in specs], return_tensors="pt")[
        "pixel_values"
    ]
    kinds = torch.tensor([s.kind for s in specs])
    colours = torch.tensor([world.colours.index(s.colour) for s in specs])
    n_kinds, n_colours = len(world.kinds), len(world.colours)
    tower = model.model.vision_tower
    with torch.no_grad():
        tokens = feature_layer_tokens(model, pixels[:1]).shape[1]
    torch.manual_seed(seed)
    head = torch.nn.Linear(tokens * tower.config.hidden_size, n_kinds + n_colours)
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=stage.learning_rate, weight_decay=0.0)
    tower.train()
    kind_acc = colour_acc = 0.0

    def loss_and_logits(
        model: PreTrainedModel, head: torch.nn.Module, index: list[int], whole: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed over this rank's pictures, divided by the whole batch's: the batch mean over the ranks."""
        logits = head(feature_layer_tokens(model, pixels[index]).flatten(1))
        cross_entropy = functools.partial(torch.nn.functional.cross_entropy, reduction="sum")
        loss = cross_entropy(logits[:, :n_kinds], kinds[index]) + cross_entropy(
            logits[:, n_kinds:], colours[index]
        )
        return loss / whole, logits

    rank, _ = rank_and_size()
    bar = _progress(stage.steps, "vision pretraining", progress and rank == 0)
    start, flop = time.perf_counter(), 0
    for step, whole in enumerate(_batches(len(specs), stage.batch_size, stage.steps, seed)):
        for group in optimizer.param_groups:
            group["lr"] = stage.learning_rate * cosine_factor(step, stage.steps, stage.warmup)
        index = share(whole)
        if step == 0:  # every step has the same shape
            counted = step_flop(
                [model, head], lambda m, h, i=index, n=len(whole): loss_and_logits(m, h, i, n)[0]
            )
            flop = stage.steps * int(all_sum(torch.tensor(counted, dtype=torch.float64)).item())
        loss, logits = loss_and_logits(model, head, index, len(whole))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sum_gradients(params)
        optimizer.step()
        right = torch.stack(
            [
                (logits[:, :n_kinds].argmax(-1) == kinds[index]).sum(),
                (logits[:, n_kinds:].argmax(-1) == colours[index]).sum(),
            ]
        ).float()
        kind_acc, colour_acc = (all_sum(right) / len(whole)).tolist()
        loss_value = float(all_sum(loss.detach().clone()))
        bar.set_postfix(loss=f"{loss_value:.3f}", kind=f"{kind_acc:.2f}")
        bar.update()
    bar.close()
    tower.eval()
    if keep_head is not None:
        keep_head["head"] = head.eval()
    return {
        "kind_accuracy": kind_acc,
        "colour_accuracy": colour_acc,
        "loss": loss_value,
        "seconds": round(time.perf_counter() - start, 3),
        "train_flop": float(flop),
    }


def train_base(
    loaded: LoadedModel,
    world: World,
    stage: BaseStage,
    *,
    seed: int,
    template: str = "chat",
    progress: bool = True,
    log: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Teach the model the world: answer every question about every kind. Returns the last losses, the loop's
    `seconds`, the padded `tokens` it trained on and its `train_flop` (FLOPs per padded token, counted on the
    first step, x tokens)."""
    from unmirage.data.collate import Collator
    from unmirage.data.conversations import Example as TrainExample

    model = loaded.model
    examples: Sequence[WorldExample] = world.base_examples(stage.examples, seed, stage.colour_share)
    pictures = [world.render(e.spec) for e in examples]
    items = [
        TrainExample(id=str(i), question=e.question, answer=e.answer, image=pictures[i])
        for i, e in enumerate(examples)
    ]
    collate = Collator(loaded, template=template)
    tower = model.model.vision_tower
    for p in tower.parameters():
        p.requires_grad_(stage.train_vision)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=stage.learning_rate, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    rank, _ = rank_and_size()
    bar = _progress(stage.steps, "base training", progress and rank == 0)
    start, tokens, flop_per_token = time.perf_counter(), 0, 0.0
    for step, whole in enumerate(_batches(len(items), stage.batch_size, stage.steps, seed + 1)):
        for group in optimizer.param_groups:
            group["lr"] = stage.learning_rate * cosine_factor(step, stage.steps)
        batch = collate([items[i] for i in share(whole)])
        batch.pop("index", None)
        tokens += batch["input_ids"].numel()
        labelled = float(all_sum((batch["labels"][:, 1:] != -100).sum().double()))
        if step == 0:
            flop_per_token = (
                step_flop([model], lambda m, b=batch, n=labelled: answer_loss(m, b, n))
                / batch["input_ids"].numel()
            )
        loss = answer_loss(model, batch, labelled)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sum_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(all_sum(loss.detach().clone())))
        if log is not None:
            log(step, losses[-1])
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.update()
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "final_loss": sum(tail) / len(tail),
        "first_loss": losses[0],
        "seconds": round(time.perf_counter() - start, 3),
        "tokens": int(all_sum(torch.tensor(tokens)).item()),
        "train_flop": float(all_sum(torch.tensor(flop_per_token * tokens, dtype=torch.float64)).item()),
    }
