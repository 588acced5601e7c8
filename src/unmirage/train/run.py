"""Run an unlearning recipe end to end: data, model, trainable parameters, reference, Trainer, outputs.

Outputs in `output_dir`: the model (Hugging Face folder, safetensors) or the PEFT adapter, its processor,
`merged/` with `--merge` (LoRA), `metrics.jsonl`, `loss_terms.png`, TensorBoard logs in `tensorboard/` (`report_to`),
`reference_stats.safetensors` (precomputed reference), `checkpoint-*` folders and `manifest.json`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from unmirage.config import dump_config
from unmirage.data.collate import PairedCollator
from unmirage.errors import UnmirageError
from unmirage.methods import MethodConfig, MethodContext, MethodInputs, get_method
from unmirage.runs import normal_permissions, read_jsonl_resumable, sha256_file, write_manifest
from unmirage.train.data import build_dataset, load_training_examples
from unmirage.train.params import (
    apply_lora,
    default_patterns,
    freeze_except,
    select_parameters,
    trainable_names,
)
from unmirage.train.recipe import Recipe, make_training_arguments, preflight
from unmirage.train.reference import STATS_FILE, build_reference, choose_kind

if TYPE_CHECKING:
    from torch import nn
    from transformers import Trainer, TrainingArguments

    from unmirage.data.collate import Collator
    from unmirage.models import LoadedModel

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_terms.png"
TENSORBOARD_DIR = "tensorboard"


@dataclass
class RunResult:
    """What a finished run produced."""

    output_dir: Path
    global_step: int
    reference: str | None
    trainable_parameters: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    trainer: Any = None


# `train:` keys that change how a run is logged or saved, not what it computes (a resume may change them).
NON_RESULT_TRAIN_KEYS = frozenset(
    {
        "report_to",
        "logging_steps",
        "logging_strategy",
        "logging_dir",
        "logging_first_step",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "save_only_model",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "disable_tqdm",
        "run_name",
    }
)


def _checkpoints(out: Path) -> list[Path]:
    """checkpoint-N folders, oldest first (by N)."""
    if not out.is_dir():
        return []
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def complete_checkpoint(path: Path) -> bool:
    """Whether a checkpoint folder was written to the end: the Trainer writes trainer_state.json last."""
    import json

    state = path / "trainer_state.json"
    try:
        return isinstance(json.loads(state.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def last_complete_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint that was written completely (a run killed while saving leaves a partial one)."""
    return next((p for p in reversed(_checkpoints(out)) if complete_checkpoint(p)), None)


def finite_weights(path: Path) -> bool:
    """Whether every tensor of a checkpoint's safetensors files is finite (True when it has none)."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return False
    return True


def set_aside_nonfinite(out: Path) -> Path | None:
    """Rename the newest checkpoints whose weights are not finite to `nonfinite-checkpoint-N` (a resume
    skips them); returns the newest checkpoint left, whose weights are finite."""
    for path in reversed(_checkpoints(out)):
        if complete_checkpoint(path) and finite_weights(path):
            return path
        path.rename(path.with_name(f"nonfinite-{path.name}"))
    return None


def run_identity(recipe: Recipe, config: MethodConfig) -> dict[str, Any]:
    """What decides a run's weights (a resume must match it): model, data files, method and training values."""
    from unmirage.outputs import file_identity, folder_path, model_identity
    from unmirage.train.recipe import TRAIN_DEFAULTS

    data = recipe.data
    train = {k: v for k, v in {**TRAIN_DEFAULTS, **recipe.train}.items() if k not in NON_RESULT_TRAIN_KEYS}
    return {
        "model": model_identity(recipe.model, recipe.tiny_sizes),
        "dtype": recipe.dtype,
        "data": {
            "forget": file_identity(data.forget) if config.uses_forget else None,
            "retain": file_identity(data.retain),
            "image_root": folder_path(data.image_root),
            "placeholder_images": data.placeholder_images,
            "template": data.template,
            "max_length": data.max_length,
            "epoch_over": data.epoch_over,
            "limit": data.limit,
        },
        "method": config.to_dict(),
        "train": train,
        "lora": recipe.lora.model_dump() if recipe.lora else None,
        "trainable": recipe.trainable,
        "reference": recipe.reference,
    }


def prepare_model(
    recipe: Recipe, config: MethodConfig, loaded: LoadedModel | None = None
) -> tuple[Any, Any, int]:
    """Load the model (unless `loaded` is given), run the method's model checks, choose the trainable
    parameters (full) or add LoRA adapters."""
    from unmirage.models import load_model

    if loaded is None:
        loaded = load_model(recipe.model, dtype=recipe.dtype, tiny_sizes=recipe.tiny_sizes)
    model, family = loaded.model, loaded.family
    config.check_model(family, model)
    model.config.use_cache = False
    if recipe.lora is not None:
        for param in model.parameters():
            param.requires_grad_(False)
        model = apply_lora(model, family, recipe.lora)
        loaded.model = model
    else:
        patterns = recipe.trainable or default_patterns(config, family, model)
        names = select_parameters([n for n, _ in model.named_parameters()], patterns)
        freeze_except(model, names)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return loaded, family, n_trainable


def run_unlearning(
    recipe: Recipe,
    config: MethodConfig,
    *,
    recipe_path: str | os.PathLike | None = None,
    resume: bool | Literal["auto"] = False,
    merge: bool | None = None,
    overrides: tuple[str, ...] = (),
    callbacks: tuple[Any, ...] = (),
    loaded: LoadedModel | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Train `recipe` (validated by `load_recipe`); with `resume`, continue from the last checkpoint.

    `resume="auto"` continues when output_dir holds a checkpoint and starts afresh otherwise (a pipeline stage
    that may have been killed part-way). `loaded` (a `LoadedModel`) replaces loading `recipe.model`
    (benchmarks build models in memory). output_dir is continued only when its manifest records the same run
    (`run_identity`); `overwrite` replaces a finished or different run. A checkpoint left half-written by a
    killed run is skipped (the last complete one is used); a NaN or infinite loss stops the run with an
    error, keeping only checkpoints with finite weights."""
    from transformers import set_seed
    from transformers.integrations import is_deepspeed_zero3_enabled

    from unmirage.data.collate import Collator
    from unmirage.train.trainer import MetricsCallback, NonFiniteLoss, PermissionsCallback, UnlearningTrainer

    merge = recipe.merge if merge is None else merge
    if merge and recipe.lora is None:
        raise UnmirageError("merge needs a LoRA run (lora: in the recipe)")
    out = Path(recipe.output_dir)
    preflight(recipe, config, recipe_path)
    spec = get_method(config.name)
    seed = int(recipe.train.get("seed", 42))
    set_seed(seed)

    # data first: bad files fail before a model is loaded
    data = recipe.data
    forget = load_training_examples(data.forget, data.image_root, data.limit) if config.uses_forget else None
    retain = load_training_examples(data.retain, data.image_root, data.limit)
    loaded, family, n_trainable = prepare_model(recipe, config, loaded)
    if family.multimodal and data.image_root is None and not data.placeholder_images:
        raise UnmirageError(
            "data.image_root is required for a vision-language model (or placeholder_images: true)"
        )
    dataset = build_dataset(forget, retain, epoch_over=data.epoch_over, seed=seed)
    collator = Collator(
        loaded, template=data.template, max_length=data.max_length, placeholder_images=data.placeholder_images
    )
    for name, examples in (("forget", forget), ("retain", retain)):
        if examples is not None:
            collator.check_prompts_fit(examples, name)

    args = make_training_arguments(recipe, recipe_path)
    zero3 = is_deepspeed_zero3_enabled()
    n_total = sum(p.numel() for p in loaded.model.parameters())
    kind = choose_kind(
        recipe.reference,
        config,
        lora=recipe.lora is not None,
        n_trainable=n_trainable,
        n_total=n_total,
        zero3=zero3,
    )
    fingerprint = {
        "model": recipe.model,
        "dtype": recipe.dtype,
        "tiny_sizes": recipe.tiny_sizes,
        "template": data.template,
        "max_length": data.max_length,
        "placeholder_images": data.placeholder_images,
        "image_root": data.image_root,
        "limit": data.limit,
        "forget": sha256_file(data.forget) if forget is not None else None,
        "retain": sha256_file(data.retain),
    }
    checkpoint = claim_run(recipe, config, out, resume=resume, overwrite=overwrite, recipe_path=recipe_path)
    resume = checkpoint is not None
    reference = build_reference(
        kind,
        family,
        loaded.model,
        config=config,
        examples={"forget": getattr(dataset, "forget", None), "retain": dataset.retain},
        collator=collator,
        batch_size=recipe.reference_batch_size or args.per_device_train_batch_size,
        path=out / STATS_FILE,
        fingerprint=fingerprint,
    )
    inputs = make_method_inputs(config, loaded, collator, args, forget=forget, seed=seed, zero3=zero3)

    trainer = UnlearningTrainer(
        model=loaded.model,
        args=args,
        train_dataset=dataset,
        data_collator=PairedCollator(collator),
        processing_class=loaded.processor,
        callbacks=[*callbacks, PermissionsCallback()],
        method=spec,
        method_config=config,
        family=family,
        reference=reference,
        method_inputs=inputs.tensors,
    )
    MetricsCallback(trainer, out / METRICS_FILE).attach()
    tensorboard_into(trainer, out / TENSORBOARD_DIR)
    try:
        with checkpoints_in_model_format(loaded.model):
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except NonFiniteLoss as err:
        kept = set_aside_nonfinite(out) if trainer.is_world_process_zero() else None
        where = (
            f"resume from {kept.name} with other settings" if kept else "no checkpoint with finite weights"
        )
        raise UnmirageError(
            f"{err} at step {trainer.state.global_step + 1}; stopped ({where}); lower train.learning_rate "
            "or check the data",
            file=out,
        ) from None
    if recipe.save_model:
        trainer.save_model(str(out))
    throughput = trainer.throughput(float(result.metrics.get("train_runtime", 0.0)))

    rows: list[dict[str, Any]] = []
    if trainer.is_world_process_zero():
        rows = read_jsonl_resumable(out / METRICS_FILE)
        outputs = [out / METRICS_FILE]
        if recipe.plot and rows:
            from unmirage.train.curves import plot_metrics

            plot_metrics(rows, out / PLOT_FILE, title=f"{config.name} on {recipe.model}")
            outputs.append(out / PLOT_FILE)
        if merge:
            outputs.append(merge_adapter(recipe, out))
        write_manifest(
            out,
            command="unlearn",
            identity=run_identity(recipe, config),
            config={"recipe": dump_config(recipe), "method": config.to_dict(), "overrides": list(overrides)},
            inputs=[p for p in (recipe_path, data.forget, data.retain) if p],
            outputs=outputs,
            seed=seed,
            method=config.name,
            reference=kind,
            reference_extra_bytes=reference.extra_bytes() if reference is not None else 0,
            trainable_parameters=n_trainable,
            trainable_names=trainable_names(loaded.model)[:200],
            total_parameters=n_total,
            lora=recipe.lora.model_dump() if recipe.lora else None,
            placeholder_images=data.placeholder_images,
            **inputs.record,
            global_step=trainer.state.global_step,
            train_metrics=result.metrics,
            **throughput,
            resumed=resume,
        )
        normal_permissions(out)
    trainer.accelerator.wait_for_everyone()
    return RunResult(out, trainer.state.global_step, kind, n_trainable, rows, trainer)


def make_method_inputs(
    config: MethodConfig,
    loaded: LoadedModel,
    collator: Collator,
    args: TrainingArguments,
    *,
    forget: list[Any] | None,
    seed: int,
    zero3: bool,
) -> MethodInputs:
    """The method's extra inputs (`MethodConfig.extra_inputs`), made from the starting model before the
    Trainer (or a resumed checkpoint) changes it. A method that runs the model on a batch (a calibration)
    first moves it to the training device, as the Trainer would, so that the forward does not run on the
    CPU."""
    if not config.needs().inputs:
        return MethodInputs()
    from unmirage.train.forward import eval_mode, forward

    model, family = loaded.model, loaded.family

    def collate(examples: list[Any]) -> dict[str, Any]:
        if zero3:
            raise UnmirageError(
                f"method '{config.name}' calibrates on the starting model before training, which ZeRO-3 "
                "sharded parameters do not allow; give the calibrated value in the recipe"
            )
        if getattr(model, "hf_device_map", None) is None:
            model.to(args.device)
        device = next(model.parameters()).device
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in collator(examples).items()}

    def hidden(batch: dict[str, Any], layer: int) -> torch.Tensor:
        with torch.no_grad(), eval_mode(model):
            return forward(model, batch, family, layer, logits=False)[1]

    context = MethodContext(model, family, seed, forget, collate, hidden)
    return config.extra_inputs(context)


def tensorboard_into(trainer: Trainer, folder: Path) -> None:
    """TensorBoard events go to `folder` (output_dir/tensorboard) instead of transformers' dated
    `output_dir/runs/<date>_<host>/`; the TENSORBOARD_LOGGING_DIR environment variable still wins."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(folder)


def claim_run(
    recipe: Recipe,
    config: MethodConfig,
    out: Path,
    *,
    resume: bool | Literal["auto"],
    overwrite: bool,
    recipe_path: str | os.PathLike | None,
    check: bool = False,
) -> Path | None:
    """Claim output_dir for this run (`outputs.claim_folder`); returns the checkpoint to resume from.

    Only the first process writes or replaces anything; the others check and read the same folder.
    `check` only checks (`unlearn --check`).
    """
    from unmirage.outputs import claim_folder

    main = int(os.environ.get("RANK", "0")) == 0
    if resume is True and last_complete_checkpoint(out) is None:
        raise UnmirageError(
            "resume: no checkpoint to resume from (no complete checkpoint-* folder)", file=out
        )
    if main or check:
        claim = claim_folder(
            out,
            command="unlearn",
            identity=run_identity(recipe, config),
            resume=bool(resume),
            overwrite=overwrite,
            inputs=[recipe.data.forget, recipe.data.retain, recipe_path],
            resume_hint="pass --resume to continue it or ",
            write=not check,
        )
    else:  # the first process checks and replaces; the others resume when asked and not replacing
        claim = "new" if overwrite else "resume"
    if claim == "new" or not resume:
        return None
    return last_complete_checkpoint(out)


@contextlib.contextmanager
def checkpoints_in_model_format(model: nn.Module) -> Iterator[None]:
    """Write `checkpoint-*` weights with the model's own parameter names.

    transformers 5 saves some families (LLaVA) under their original Hub key names, but `Trainer` reloads a
    checkpoint with a plain `load_state_dict`, which then matches nothing and silently resumes from the
    starting weights. Inside this block `save_pretrained` keeps the in-memory names; the final model folder
    (saved after the block) keeps the standard format.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):  # PEFT adapters are saved by PEFT under their own names
        yield
        return
    model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_original_format=False)
    try:
        yield
    finally:
        del model.save_pretrained


def merge_adapter(recipe: Recipe, out: Path) -> Path:
    """Load the base model with the saved adapter, merge the LoRA weights and save to `out/merged`."""
    from unmirage.models import load_model

    merged_dir = out / "merged"
    loaded = load_model(recipe.model, dtype=recipe.dtype, tiny_sizes=recipe.tiny_sizes, adapter=out)
    model = loaded.model.merge_and_unload()
    model.save_pretrained(str(merged_dir))
    loaded.processor.save_pretrained(str(merged_dir))
    return merged_dir / "config.json"


def set_threads_from_env() -> None:
    """Honour OMP_NUM_THREADS for torch's intra-op pool (multi-process CPU runs oversubscribe otherwise)."""
    value = os.environ.get("OMP_NUM_THREADS")
    if value and value.isdigit():
        torch.set_num_threads(int(value))
