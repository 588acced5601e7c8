"""The method registry: each method file calls `register(name, config_cls, loss_fn, description)`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from unmirage.errors import UnmirageError
from unmirage.methods.base import LossOutput, MethodConfig


@dataclass(frozen=True)
class MethodSpec:
    """One registered method: its config class and pure loss function."""

    name: str
    config_cls: type[MethodConfig]
    loss_fn: Callable[..., LossOutput]
    description: str

    def make_config(
        self, data: Mapping[str, Any] | None = None, source: object | None = None
    ) -> MethodConfig:
        """Validated config from a recipe's `method:` table (the `name` key is ignored)."""
        data = {k: v for k, v in (data or {}).items() if k != "name"}
        return self.config_cls.from_mapping(data, source=source)


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str, config_cls: type[MethodConfig], loss_fn: Callable[..., LossOutput], description: str
) -> MethodSpec:
    """Add a method; registering a name twice with a different config class is an error."""
    existing = _REGISTRY.get(name)
    if existing is not None and existing.config_cls is not config_cls:
        raise ValueError(f"method '{name}' is already registered")
    if config_cls.name != name:
        raise ValueError(
            f"config class {config_cls.__name__} declares name {config_cls.name!r}, not {name!r}"
        )
    spec = MethodSpec(name, config_cls, loss_fn, description)
    _REGISTRY[name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered method `name`, or a one-line error listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnmirageError(
            f"unknown method '{name}' (available: {', '.join(available_methods())})", field="method.name"
        ) from None


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)
