"""The method registry: each method file decorates its loss function with `@register(ConfigClass, description)`;
the package imports every module in it, so a new file is all it takes to add a method."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from unmirage.errors import UnmirageError
from unmirage.methods.base import LossOutput, MethodConfig

F = TypeVar("F", bound=Callable[..., LossOutput])


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


def register(config_cls: type[MethodConfig], description: str) -> Callable[[F], F]:
    """Decorator of a method's loss function: registers it under `config_cls.name` with its config class
    (registering a name twice with a different config class is an error) and returns the function unchanged."""
    name = config_cls.name
    if not name:
        raise ValueError(f"config class {config_cls.__name__} declares no name")

    def decorate(loss_fn: F) -> F:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.config_cls is not config_cls:
            raise ValueError(f"method '{name}' is already registered")
        _REGISTRY[name] = MethodSpec(name, config_cls, loss_fn, description)
        return loss_fn

    return decorate


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
