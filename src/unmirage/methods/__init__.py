"""Unlearning methods, found by name: `get_method("npo")`, `available_methods()`.

Each method is one module holding a validated config dataclass and a pure loss function on tensors; the
trainer (`unmirage.train`) computes the quantities the config `requires()` and calls the loss.
"""

from __future__ import annotations

from unmirage.methods import grad_ascent, grad_diff, npo, rmu, sft, simnpo  # noqa: F401 (registration)
from unmirage.methods.base import LossOutput, MethodConfig, SequenceNLL, masked_mse, sequence_nll
from unmirage.methods.registry import MethodSpec, available_methods, get_method, register

__all__ = [
    "LossOutput",
    "MethodConfig",
    "MethodSpec",
    "SequenceNLL",
    "available_methods",
    "get_method",
    "masked_mse",
    "register",
    "sequence_nll",
]
