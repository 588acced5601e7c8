"""One forward pass of a (possibly wrapped) model on a collated batch, optionally capturing a decoder layer.

The LM head runs at the answer positions only (`unmirage.methods.base.answer_positions`): the model gets
them as a boolean `logits_to_keep` mask, which Hugging Face causal LMs and VLMs apply to the last hidden state
before their head, so the `[batch, seq, vocab]` logits are never made. Every loss of `unmirage.methods` reads
only the labelled tokens' log-probabilities, so the values are those of the full logits. A model whose
`forward` has no `logits_to_keep` argument returns every position's logits, which `sequence_nll` also takes.

The layer's output is captured with a forward hook registered on `family.decoder_layer(model, layer)` for the
duration of the call only (so gradient-checkpoint recomputation in backward does not fire it again).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from unmirage.methods.base import answer_positions
from unmirage.models.families import FamilyAdapter, unwrap

NON_MODEL_KEYS = ("labels", "index")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without the keys the model must not see (labels: unmirage computes its own NLL)."""
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


@contextlib.contextmanager
def capture_layer(model: nn.Module, family: FamilyAdapter, layer: int | None) -> Iterator[dict[str, Any]]:
    """Yield a dict that holds `hidden` = the output hidden state of decoder layer `layer` after a forward."""
    store: dict[str, Any] = {}
    if layer is None:
        yield store
        return

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        store["hidden"] = output[0] if isinstance(output, tuple | list) else output

    handle = family.decoder_layer(unwrap(model), layer).register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def keeps_logits_at(model: nn.Module) -> bool:
    """Whether the Hugging Face model under `model`'s wrappers takes `logits_to_keep` (then its head can run
    at chosen positions only)."""
    return "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters


def forward(
    model: nn.Module,
    batch: dict[str, Any],
    family: FamilyAdapter,
    layer: int | None = None,
    call: Callable[..., Any] | None = None,
    *,
    logits: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(logits, hidden)` of `model` on `batch`; `hidden` is decoder layer `layer`'s output (None if no layer).

    `logits` are those of the answer positions of `batch["labels"]`, `[answer tokens, vocab]` (with
    `logits=False`: of no position, `[0, vocab]`, for callers that want only `hidden`), or every position's,
    `[batch, seq, vocab]`, when the model cannot keep chosen positions; `sequence_nll` takes either.
    `call(**inputs)` runs the model (default: `model` itself); the hook is placed on `model`'s layer.
    """
    inputs = model_inputs(batch)
    if keeps_logits_at(model):
        if logits:
            inputs["logits_to_keep"] = answer_positions(batch["labels"])
        else:
            inputs["logits_to_keep"] = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    with capture_layer(model, family, layer) as store:
        outputs = (call or model)(**inputs, use_cache=False)
    kept = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    if layer is not None and "hidden" not in store:
        raise RuntimeError(f"decoder layer {layer} did not run in the forward pass")
    return kept, store.get("hidden")


def position_mask(
    batch: dict[str, Any], family: FamilyAdapter, model: nn.Module, mask: str
) -> torch.Tensor | None:
    """The hidden-state positions that count (`Needs.mask`): `all` -> None (every position, padding included:
    RMU's reference average), `text` -> attended positions that are not image tokens, `answer` -> labelled
    answer positions."""
    if mask == "all":
        return None
    if mask == "text":
        attended = batch["attention_mask"].bool()
        return attended & ~family.image_mask(batch["input_ids"], unwrap(model)).to(attended.device)
    if mask == "answer":
        return batch["labels"] != -100
    raise ValueError(f"unknown mask {mask!r}")


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Temporarily put `module` (and its children) in eval mode, restoring each one's flag after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
