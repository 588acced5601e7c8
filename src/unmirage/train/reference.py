"""The frozen reference model (NPO's log-ratio, RMU's retain activations), without a second copy where possible.

Kinds (`reference:` in a recipe; `auto` picks the first that applies):

- `precomputed` (default for NLL-only references such as NPO): one pass of the starting model over the
  forget/retain examples the run will draw, before the first optimizer step, stores each example's summed
  answer NLL and token count, indexed by dataset index (so shuffling and cycling work), in
  `reference_stats.safetensors` in the run folder. With `train.max_steps` the examples are those of the
  first `max_steps x gradient_accumulation_steps` micro-batches of every process, read from the run's own
  seeded sampler (a 5-step run on a 2000-example set computes 5 x batch examples, not 2000); with epochs,
  every example. Exact, because the reference is frozen; costs no model memory and no forward per step.
- `adapter` (LoRA): the trained model with its adapters disabled is the starting model.
- `swap`: when only some parameters train (RMU's default: projector + 3 down-projections), the reference is
  the same model called with the initial values of just those parameters (`torch.func.functional_call`);
  costs one copy of the trainable parameters.
- `copy`: a frozen deep copy of the starting model (under DeepSpeed ZeRO-3 it is sharded with
  `deepspeed.initialize`, no optimizer).

Every reference forward runs in eval mode under `torch.no_grad()`.
"""

from __future__ import annotations

import abc
import copy
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unmirage.errors import UnmirageError
from unmirage.methods.base import SIDES, MethodConfig, SequenceNLL, sequence_nll
from unmirage.models.families import FamilyAdapter, unwrap
from unmirage.train.forward import eval_mode, forward

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import Trainer

KINDS = ("auto", "precomputed", "adapter", "swap", "copy")
STATS_FILE = "reference_stats.safetensors"


def check_request(requested: str, config: MethodConfig, *, lora: bool) -> None:
    """Reject reference kinds that cannot work for this method/recipe (before any model is loaded)."""
    if requested not in KINDS:
        raise UnmirageError(f"reference: must be one of {', '.join(KINDS)} (got '{requested}')")
    if requested == "precomputed" and config.needs().reference_hidden:
        raise UnmirageError(
            f"reference: precomputed stores per-example NLL statistics only; the activations method "
            f"'{config.name}' needs come from 'adapter' (LoRA), 'swap' or 'copy' (or 'auto')"
        )
    if requested == "adapter" and not lora:
        raise UnmirageError("reference: adapter needs a LoRA run (set lora:)")


def choose_kind(
    requested: str, config: MethodConfig, *, lora: bool, n_trainable: int, n_total: int, zero3: bool
) -> str | None:
    """The reference kind for this run (None when the method needs no reference)."""
    check_request(requested, config, lora=lora)
    needs = config.needs()
    if not needs.uses_reference:
        return None
    if requested != "auto":
        if requested == "swap" and zero3:
            raise UnmirageError(
                "reference: swap does not work on ZeRO-3 sharded parameters; use copy or auto"
            )
        return requested
    if not needs.reference_hidden:
        return "precomputed"
    if lora:
        return "adapter"
    if not zero3 and n_trainable <= n_total // 4:
        return "swap"
    return "copy"


class Reference(abc.ABC):
    """Base: `nll(model, batch, side)` and `hidden(model, batch, layer)` of the frozen starting model."""

    kind = "base"

    def __init__(self, family: FamilyAdapter) -> None:
        self.family = family

    def extra_bytes(self) -> int:
        """Memory this reference holds besides the trained model (weights, tables); 0 for `adapter`."""
        return 0

    def prepare(self, trainer: Trainer, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Called at every `compute_loss`; does one-time work (sharding, precomputation) on the first call."""

    def plan(self, trainer: Trainer, loader: DataLoader) -> None:  # noqa: B027 (optional hook)
        """Called with the training dataloader before its first batch (the examples the run will draw)."""

    @abc.abstractmethod
    def _forward(self, model: nn.Module, batch: dict[str, Any], layer: int | None) -> tuple[Any, Any]:
        """`(logits, hidden)` of the reference (called under `torch.no_grad()`): the answer positions' logits
        for `nll` (`layer` None), decoder layer `layer`'s output for `hidden` (then no logits)."""

    def nll(self, model: nn.Module, batch: dict[str, Any], side: str) -> SequenceNLL:
        """Per-example answer NLL of the reference on `batch`."""
        with torch.no_grad():
            logits, _ = self._forward(model, batch, None)
            return sequence_nll(logits, batch["labels"])

    def hidden(self, model: nn.Module, batch: dict[str, Any], layer: int) -> torch.Tensor:
        """Output of decoder layer `layer` of the reference on `batch`."""
        with torch.no_grad():
            _, hidden = self._forward(model, batch, layer)
        return hidden


def peft_model_of(model: nn.Module) -> nn.Module:
    """The PeftModel inside DDP/DeepSpeed wrappers."""
    while not hasattr(model, "disable_adapter"):
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            raise UnmirageError("reference: adapter needs a PEFT (LoRA) model")
        model = inner
    return model


class AdapterReference(Reference):
    """LoRA: the starting model is the trained model with its adapters disabled."""

    kind = "adapter"

    def _forward(self, model: nn.Module, batch: dict[str, Any], layer: int | None) -> tuple[Any, Any]:
        peft = peft_model_of(model)
        with peft.disable_adapter(), eval_mode(peft):
            return forward(peft, batch, self.family, layer, logits=layer is None)


class SwapReference(Reference):
    """The trained model called with the initial values of its trainable parameters."""

    kind = "swap"

    def __init__(self, family: FamilyAdapter, model: nn.Module) -> None:
        super().__init__(family)
        self.initial = {n: p.detach().clone() for n, p in unwrap(model).named_parameters() if p.requires_grad}

    def extra_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.initial.values())

    def _forward(self, model: nn.Module, batch: dict[str, Any], layer: int | None) -> tuple[Any, Any]:
        base = unwrap(model)
        params = dict(base.named_parameters())
        for name, value in self.initial.items():  # follow the model to its device once
            if value.device != params[name].device:
                self.initial[name] = value.to(params[name].device)

        def call(**inputs: Any) -> Any:
            return torch.func.functional_call(base, self.initial, args=(), kwargs=inputs, strict=False)

        with eval_mode(base):
            return forward(base, batch, self.family, layer, call=call, logits=layer is None)


class CopyReference(Reference):
    """A frozen deep copy of the starting model; sharded through DeepSpeed when the run uses ZeRO-3."""

    kind = "copy"

    def __init__(self, family: FamilyAdapter, model: nn.Module) -> None:
        super().__init__(family)
        self.model = copy.deepcopy(unwrap(model)).eval()
        self.model.requires_grad_(False)
        self.engine: Any = None

    def extra_bytes(self) -> int:
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def prepare(self, trainer: Trainer, model: nn.Module) -> None:
        if self.engine is not None:
            return
        if getattr(trainer, "is_deepspeed_enabled", False):
            self.engine = deepspeed_frozen(self.model, trainer.accelerator)
        else:
            self.model.to(trainer.args.device)
            self.engine = self.model

    def _forward(self, model: nn.Module, batch: dict[str, Any], layer: int | None) -> tuple[Any, Any]:
        module = self.engine if self.engine is not None else self.model
        return forward(module, batch, self.family, layer, logits=layer is None)


def deepspeed_frozen(model: nn.Module, accelerator: Accelerator) -> Any:
    """Wrap a frozen model with DeepSpeed for inference inside a ZeRO run (ZeRO-3 shards it; other stages
    keep it whole), with the run's own DeepSpeed config minus its optimizer and scheduler."""
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage != 3:
        config["zero_optimization"] = {"stage": 0}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


class NLLTable:
    """Per-example reference statistics of one side: `total[i]`, `count[i]` for dataset index i, and
    `computed[i]` (False for examples the run does not draw)."""

    def __init__(
        self, total: torch.Tensor, count: torch.Tensor, computed: torch.Tensor | None = None
    ) -> None:
        self.total = total
        self.count = count
        self.computed = torch.ones_like(total, dtype=torch.bool) if computed is None else computed.bool()

    def covers(self, indices: Sequence[int]) -> bool:
        """Whether every index in `indices` has statistics."""
        return (
            bool(self.computed[torch.as_tensor(list(indices), dtype=torch.long)].all()) if indices else True
        )

    def lookup(self, index: torch.Tensor) -> SequenceNLL:
        idx = index.detach().cpu().long()
        if not bool(self.computed[idx].all()):
            missing = idx[~self.computed[idx]].tolist()
            raise UnmirageError(
                f"reference statistics were not computed for dataset index {missing[0]} (the run draws an "
                "example its plan did not include); set reference=copy or start the run again"
            )
        return SequenceNLL(self.total[idx].to(index.device), self.count[idx].to(index.device))


def drawn_items(loader: DataLoader, micro_batches: int, num_processes: int) -> list[int] | None:
    """Dataset items of the first `micro_batches` micro-batches of every process, or None when the loader's
    order cannot be replayed (then every example is computed).

    The global batch sampler (under `BatchSamplerShard`, which deals its batches out to the processes) is
    iterated epoch after epoch with the epoch set as the Trainer sets it, so a seeded or sequential sampler
    yields exactly the order training will see; nothing is collated and no state survives (the Trainer sets
    the epoch again before each pass).
    """
    from torch.utils.data import SequentialSampler

    shard = getattr(loader, "batch_sampler", None)
    batches = getattr(shard, "batch_sampler", shard)
    sampler = getattr(batches, "sampler", None)
    if batches is None or not (hasattr(sampler, "set_epoch") or isinstance(sampler, SequentialSampler)):
        return None
    wanted = micro_batches * num_processes
    items: set[int] = set()
    seen, epoch = 0, 0
    while seen < wanted:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        before = seen
        for batch in batches:
            items.update(int(i) for i in batch)
            seen += 1
            if seen >= wanted:
                break
        if seen == before:
            break
        epoch += 1
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)
    return sorted(items)


class PrecomputedReference(Reference):
    """Reference NLL statistics computed once (before the first optimizer step) and stored with the run."""

    kind = "precomputed"

    def __init__(
        self,
        family: FamilyAdapter,
        *,
        sides: Sequence[str],
        examples: dict[str, Sequence[Any]],
        collator: Callable[[list[Any]], dict[str, Any]],
        batch_size: int,
        path: str | Path,
        fingerprint: dict[str, Any],
    ) -> None:
        super().__init__(family)
        self.sides = tuple(sides)
        self.examples = examples
        self.collator = collator
        self.batch_size = batch_size
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.tables: dict[str, NLLTable] | None = None
        self.drawn: dict[str, list[int]] = {side: list(range(len(examples[side]))) for side in self.sides}

    def plan(self, trainer: Trainer, loader: DataLoader) -> None:
        """Keep only the examples of the first `max_steps x accumulation` micro-batches (with `max_steps`)."""
        args = trainer.args
        if args.max_steps <= 0:
            return
        items = drawn_items(loader, args.max_steps * args.gradient_accumulation_steps, args.world_size)
        if items is None:
            return
        dataset = trainer.train_dataset
        self.drawn = {side: sorted({dataset[i][side].index for i in items}) for side in self.sides}

    def prepare(self, trainer: Trainer, model: nn.Module) -> None:
        if self.tables is not None:
            return
        stored = self.load()
        if stored is not None:
            for side, table in stored.items():
                if not table.covers(self.drawn[side]):
                    raise UnmirageError(
                        f"the stored reference statistics do not cover every {side} example this run draws "
                        "(more steps than the run that computed them?); start the run again in a new output_dir",
                        file=self.path,
                    )
            self.tables = stored
            return
        if trainer.state.global_step > 0:
            raise UnmirageError(
                f"resuming at step {trainer.state.global_step} but the reference statistics are missing; "
                "they must come from the starting model (start the run again)",
                file=self.path,
            )
        self.tables = {
            side: compute_table(
                model,
                self.examples[side],
                self.collator,
                self.batch_size,
                trainer,
                self.family,
                indices=self.drawn[side],
                desc=f"reference statistics ({side}: {len(self.drawn[side])} of {len(self.examples[side])})",
            )
            for side in self.sides
        }
        if trainer.accelerator.is_main_process:
            self.save()
        trainer.accelerator.wait_for_everyone()

    def extra_bytes(self) -> int:
        tables = (self.tables or {}).values()
        return sum(t.total.numel() * 9 for t in tables)

    def _forward(self, model: nn.Module, batch: dict[str, Any], layer: int | None) -> tuple[Any, Any]:
        raise UnmirageError("a precomputed reference holds NLL statistics only, no forward pass")

    def nll(self, model: nn.Module, batch: dict[str, Any], side: str) -> SequenceNLL:
        if "index" not in batch:
            raise UnmirageError("precomputed reference statistics need the batch's dataset index")
        return self.tables[side].lookup(batch["index"])

    def save(self) -> None:
        from safetensors.torch import save

        from unmirage.runs import atomic_open

        tensors = {}
        for side, table in self.tables.items():
            tensors[f"{side}.total"] = table.total.contiguous()
            tensors[f"{side}.count"] = table.count.contiguous()
            tensors[f"{side}.computed"] = table.computed.to(torch.uint8).contiguous()
        with atomic_open(self.path, "wb") as handle:
            handle.write(
                save(tensors, metadata={"fingerprint": json.dumps(self.fingerprint, sort_keys=True)})
            )

    def load(self) -> dict[str, NLLTable] | None:
        """The stored tables if the file exists; a file made for other inputs is an error."""
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            stored = json.loads((handle.metadata() or {}).get("fingerprint", "{}"))
            if stored != json.loads(json.dumps(self.fingerprint, sort_keys=True)):
                raise UnmirageError(
                    "reference statistics were computed for another model or data set; remove the file or "
                    "use another output_dir",
                    file=self.path,
                )
            keys = set(handle.keys())
            return {
                s: NLLTable(
                    handle.get_tensor(f"{s}.total"),
                    handle.get_tensor(f"{s}.count"),
                    handle.get_tensor(f"{s}.computed") if f"{s}.computed" in keys else None,
                )
                for s in self.sides
            }


def compute_table(
    model: nn.Module,
    examples: Sequence[Any],
    collator: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    trainer: Trainer,
    family: FamilyAdapter,
    *,
    indices: Sequence[int] | None = None,
    desc: str = "reference statistics",
) -> NLLTable:
    """One no-grad, eval-mode pass over `examples[i]` for i in `indices` (default: all), sharded over
    processes and gathered -> an `NLLTable` over all of `examples` (the others marked not computed).

    Every process runs the same number of batches (the last shard repeats an example), so the pass also
    works when the forward itself is collective (DeepSpeed ZeRO-3). The bar shows examples and an ETA.
    """
    from tqdm.auto import tqdm

    accelerator = trainer.accelerator
    n = len(examples)
    wanted = list(range(n)) if indices is None else list(indices)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = math.ceil(len(wanted) / world)
    mine = [wanted[min(rank * per_rank + k, len(wanted) - 1)] for k in range(per_rank)]
    totals, counts, done = [], [], []
    bar = tqdm(total=len(mine), desc=desc, unit="ex", disable=not accelerator.is_local_main_process)
    with torch.no_grad(), eval_mode(model), bar:
        for start in range(0, per_rank, batch_size):
            chunk = mine[start : start + batch_size]
            batch = trainer._prepare_inputs(collator([examples[i] for i in chunk]))
            logits, _ = forward(model, batch, family)
            stats = sequence_nll(logits, batch["labels"])
            totals.append(stats.total.float())
            counts.append(stats.count.float())
            done.append(torch.tensor(chunk, device=stats.total.device))
            bar.update(len(chunk))
    total = accelerator.gather(torch.cat(totals)).cpu()
    count = accelerator.gather(torch.cat(counts)).cpu()
    index = accelerator.gather(torch.cat(done)).cpu()
    table_total = torch.zeros(n, dtype=torch.float32)
    table_count = torch.zeros(n, dtype=torch.float32)
    computed = torch.zeros(n, dtype=torch.bool)
    table_total[index] = total
    table_count[index] = count
    computed[index] = True
    return NLLTable(table_total, table_count, computed)


def build_reference(
    kind: str | None,
    family: FamilyAdapter,
    model: nn.Module,
    *,
    config: MethodConfig,
    examples: dict[str, Sequence[Any]] | None = None,
    collator: Callable[[list[Any]], dict[str, Any]] | None = None,
    batch_size: int = 8,
    path: str | Path | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> Reference | None:
    """The reference object of `kind` (from `choose_kind`), built from the starting model."""
    if kind is None:
        return None
    if kind == "precomputed":
        needs = config.needs()
        sides = [s for s in SIDES if needs.side(s).ref_nll]
        return PrecomputedReference(
            family,
            sides=sides,
            examples=examples or {},
            collator=collator,
            batch_size=batch_size,
            path=path,
            fingerprint=fingerprint or {},
        )
    if kind == "adapter":
        return AdapterReference(family)
    if kind == "swap":
        return SwapReference(family, model)
    return CopyReference(family, model)
