"""One forward pass of a (possibly wrapped) model on a collated batch, optionally capturing a decoder layer.

The layer's output is captured with a forward hook registered on `family.decoder_layer(model, layer)` for the
duration of the call only (so gradient-checkpoint recomputation in backward does not fire it again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

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


def forward(
    model: nn.Module, batch: dict[str, Any], family: FamilyAdapter, layer: int | None = None, call: Any = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(logits, hidden)` of `model` on `batch`; `hidden` is decoder layer `layer`'s output (None if no layer).

    `call(**inputs)` runs the model (default: `model` itself); the hook is placed on `model`'s layer.
    """
    with capture_layer(model, family, layer) as store:
        outputs = (call or model)(**model_inputs(batch), use_cache=False)
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    if layer is not None and "hidden" not in store:
        raise RuntimeError(f"decoder layer {layer} did not run in the forward pass")
    return logits, store.get("hidden")


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
