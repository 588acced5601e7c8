"""`UnlearningTrainer`: a `transformers.Trainer` whose only override is `compute_loss`.

Each step gets `{"forget": batch, "retain": batch}` (or `{"retain": batch}` for SFT). `compute_loss` runs the
forward passes the method's config `needs()`, asks the reference for its side, adds the method's extra
inputs (made once before training), calls the method's pure loss function and returns the loss. The loss is
the method's value on the micro-batch; the Trainer divides it by the number of accumulation steps
(`loss_is_scaled_for_ga = False`), so with gradient accumulation the update is the mean over micro-batches,
as in the reference. Named terms and diagnostics are accumulated per micro-batch and written, averaged over
the logging window and over processes, by `MetricsCallback`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from unmirage.methods import LossOutput, MethodConfig, MethodSpec, sequence_nll
from unmirage.methods.base import SIDES
from unmirage.models.families import FamilyAdapter
from unmirage.runs import JsonlAppender, read_jsonl_resumable
from unmirage.train.forward import forward, position_mask
from unmirage.train.reference import Reference

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments


class NonFiniteLoss(RuntimeError):
    """A training loss that is NaN or infinite (the run stops before the optimizer uses it)."""


class UnlearningTrainer(Trainer):
    """Trainer for every registered method (see the module doc)."""

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        method: MethodSpec,
        method_config: MethodConfig,
        family: FamilyAdapter,
        reference: Reference | None = None,
        method_inputs: dict[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.method = method
        self.method_config = method_config
        self.family = family
        self.reference = reference
        self.method_inputs = dict(method_inputs or {})
        self.needs = method_config.needs()
        missing = set(self.needs.inputs) - set(self.method_inputs)
        if missing:
            raise ValueError(f"method {method_config.name}: extra inputs {sorted(missing)} were not made")
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_count = 0
        self.tokens_seen = 0  # non-padding tokens through the trained model's forward passes (this process)

    def get_train_dataloader(self) -> Any:
        """The Trainer's dataloader; the reference sees it first (which examples the run will draw)."""
        loader = super().get_train_dataloader()
        if self.reference is not None:
            self.reference.plan(self, loader)
        return loader

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, LossOutput]:
        """The method's loss on one micro-batch of paired forget/retain inputs."""
        if self.reference is not None:
            self.reference.prepare(self, model)
        needs = self.needs
        quantities: dict[str, Any] = {name: self.method_inputs[name] for name in needs.inputs}
        for side in SIDES:
            want = needs.side(side)
            batch = inputs.get(side)
            if want.nll or want.hidden:
                if model.training:
                    self.tokens_seen += int(batch["attention_mask"].sum())
                layer = needs.layer if want.hidden else None
                logits, hidden = forward(model, batch, self.family, layer, logits=want.nll)
                if want.nll:
                    quantities[f"{side}_nll"] = sequence_nll(logits, batch["labels"])
                if want.hidden:
                    quantities[f"{side}_hidden"] = hidden
                    quantities[f"{side}_mask"] = position_mask(batch, self.family, model, needs.mask)
                del logits
            if want.ref_nll:
                quantities[f"{side}_ref_nll"] = self.reference.nll(model, batch, side)
            if want.ref_hidden:
                quantities[f"{side}_ref_hidden"] = self.reference.hidden(model, batch, needs.layer)
        out = self.method.loss_fn(self.method_config, **quantities)
        if model.training:
            if not bool(torch.isfinite(out.loss.detach()).all()):
                raise NonFiniteLoss(f"the training loss is {float(out.loss.detach().float().mean())}")
            self._record(out)
        return (out.loss, out) if return_outputs else out.loss

    def _record(self, out: LossOutput) -> None:
        for name, value in {**out.terms, **out.stats}.items():
            value = value.detach().float()
            self._metric_sums[name] = self._metric_sums.get(name, 0) + value
        self._metric_count += 1

    def throughput(self, runtime_s: float) -> dict[str, float]:
        """Training tokens (all processes) and tokens per second over `runtime_s` (collective)."""
        tokens = self.accelerator.reduce(
            torch.tensor(float(self.tokens_seen), device=self.args.device), "sum"
        )
        total = float(tokens)
        return {
            "train_tokens": total,
            "train_tokens_per_s": round(total / runtime_s, 2) if runtime_s > 0 else 0.0,
        }

    def pop_metrics(self) -> dict[str, float]:
        """Means of each term/diagnostic since the last call, averaged over processes (collective)."""
        if not self._metric_count:
            return {}
        names = sorted(self._metric_sums)
        means = torch.stack([self._metric_sums[n] for n in names]) / self._metric_count
        means = self.accelerator.reduce(means.to(self.args.device), reduction="mean")
        self._metric_sums, self._metric_count = {}, 0
        return {n: float(v) for n, v in zip(names, means.tolist())}


class PermissionsCallback(TrainerCallback):
    """Gives each checkpoint the permissions of normally created files (safetensors writes them 0o600)."""

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            from unmirage.runs import normal_permissions

            normal_permissions(Path(args.output_dir) / f"checkpoint-{state.global_step}")


class MetricsCallback(TrainerCallback):
    """Adds the named loss terms to every training log (so TensorBoard gets them) and appends one JSON line
    per logged step to `metrics.jsonl` (`step`, `epoch`, `loss`, `learning_rate`, `grad_norm`, terms...).

    It must run before the reporting callbacks: `attach` puts it first. On resume, lines after the
    checkpoint's step are dropped so that the file matches an uninterrupted run.
    """

    def __init__(self, trainer: UnlearningTrainer, path: str | Path) -> None:
        self.trainer = trainer
        self.path = Path(path)
        self.writer: JsonlAppender | None = None

    def attach(self) -> MetricsCallback:
        self.trainer.callback_handler.callbacks.insert(0, self)
        return self

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        rows = read_jsonl_resumable(self.path)
        kept = [r for r in rows if r.get("step", 0) <= state.global_step]
        if len(kept) != len(rows):
            import json

            from unmirage.runs import atomic_write_text

            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.writer = JsonlAppender(self.path)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is None or "loss" not in logs:
            return
        terms = self.trainer.pop_metrics()
        logs.update(terms)
        if self.writer is not None:
            row = {"step": state.global_step, "epoch": state.epoch, "loss": logs["loss"]}
            for key in ("learning_rate", "grad_norm"):
                if key in logs:
                    row[key] = float(logs[key])
            row.update(terms)
            self.writer.write_many([row])

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
