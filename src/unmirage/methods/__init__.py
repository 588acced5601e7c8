"""Unlearning methods, found by name: `get_method("npo")`, `available_methods()`.

Each method is one module holding a validated config dataclass and a pure loss function on tensors,
registered with `@register(ConfigClass, description)`; every module of this package is imported here, so
adding a method is adding a file. The trainer (`unmirage.train`) computes what the config `needs()` and calls
the loss.
"""

from __future__ import annotations

import importlib
import pkgutil

from unmirage.methods.base import (
    LossOutput,
    MethodConfig,
    MethodContext,
    MethodInputs,
    Needs,
    SequenceNLL,
    SideNeeds,
    masked_mse,
    sequence_nll,
)
from unmirage.methods.registry import MethodSpec, available_methods, get_method, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "LossOutput",
    "MethodConfig",
    "MethodContext",
    "MethodInputs",
    "MethodSpec",
    "Needs",
    "SequenceNLL",
    "SideNeeds",
    "available_methods",
    "get_method",
    "masked_mse",
    "register",
    "sequence_nll",
]
