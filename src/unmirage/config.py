"""YAML recipes validated with pydantic, and `key.sub=value` command-line overrides.

Every recipe model derives from `StrictModel` (unknown keys are errors). `load_config` reads a YAML file,
applies overrides and validates, turning the first problem into a one-line `UnmirageError` that names the
file and the dotted key.

A recipe composes: `defaults: [a.yaml, b.yaml]` (paths relative to the recipe) reads those files first, each
with its own `defaults`, deep-merges them in order and then the recipe's own keys over them: a later file
overrides an earlier one key by key, tables merge, lists and values are replaced (`read_composed`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticUndefined

from unmirage.errors import UnmirageError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every recipe section: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def setting(
    default: Any = PydanticUndefined,
    *,
    help: str,
    panel: str | None = None,
    flag: str | None = None,
    cli: bool = True,
    argument: bool = False,
    options: Iterable[str] = (),
    prefix: str | None = None,
    **field: Any,
) -> Any:
    """A settings field with its help text and how the command line shows it (`unmirage.cli.settings`).

    `help` is the field's description (name other settings in backticks: the CLI shows them as flags);
    `panel` groups its option in `--help`; `flag` renames the option (`judge` for `asr_methods`);
    `cli=False` keeps it off the command line (a secret read from the environment instead); `argument=True`
    makes it the command's positional argument (a data file). A nested,
    optional settings model becomes an on/off flag plus one `--PREFIX-NAME` option per field in `options`.
    Other keywords go to `pydantic.Field` (`ge`, `default_factory`, `exclude`).
    """
    extra = {"panel": panel, "flag": flag, "cli": None if cli else False, "prefix": prefix}
    extra["argument"] = True if argument else None
    extra = {key: value for key, value in extra.items() if value is not None}
    if options:
        extra["options"] = list(options)
    return Field(default, description=help, json_schema_extra=extra, **field)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], value), the value parsed as YAML (`1e-5`, `true`, `[1,2]`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UnmirageError(f"override '{text}' must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads 5e-7 as a string; numbers written that way are numbers on a command line.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
    return [part for part in key.strip().split(".")], value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `key.sub=value` override set (creating nested tables as needed)."""
    result = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise UnmirageError(f"override '{text}': '{'.'.join(keys[: i + 1])}' is not a table")
            node = child
        node[keys[-1]] = value
    return result


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, except that a key given twice in one mapping is an error (not last-one-wins)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """Parse YAML safely (no tags that build objects); a key repeated in one mapping is a YAMLError."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, bad YAML, a repeated key or a non-mapping is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UnmirageError("recipe file not found", file=path)
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or ""
        detail = f": {problem}" if problem.startswith("duplicate key") else ""
        raise UnmirageError(f"not valid YAML{where}{detail}", file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UnmirageError("a recipe must be a YAML mapping of keys to values", file=path)
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` over `base`: tables merge key by key (recursively), anything else in `update` replaces."""
    merged = _deep_copy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _deep_copy(value)
    return merged


def read_composed(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML recipe with its `defaults:` list resolved: the files it names (relative to the recipe,
    each composed the same way) deep-merged in order, then the recipe's own keys. A missing default or a
    cycle is a one-line error naming the recipe that lists it."""
    path = Path(path)
    data = read_yaml(path)
    defaults = data.pop("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) and d.strip() for d in defaults):
        raise UnmirageError("defaults: must be a list of YAML file paths (relative to this file)", file=path)
    chain = (*_chain, path.resolve())
    merged: dict[str, Any] = {}
    for entry in defaults:
        target = path.parent / entry
        if not target.is_file():
            raise UnmirageError(f"defaults: file not found: {entry} (looked for {target})", file=path)
        if target.resolve() in chain:
            cycle = " -> ".join(str(p.name) for p in (*chain, target.resolve()))
            raise UnmirageError(f"defaults: {entry} includes itself ({cycle})", file=path)
        merged = deep_merge(merged, read_composed(target, chain))
    return deep_merge(merged, data)


def validate(model: type[T], data: Mapping[str, Any], source: str | os.PathLike = "<config>") -> T:
    """Validate `data` against `model`; the first error becomes `file: key.sub: message (got value)`."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UnmirageError(format_validation_error(err), file=source) from None


def format_validation_error(err: ValidationError) -> str:
    """One line for the first pydantic error, naming the dotted key."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    kind = first["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = first["msg"]
        if "input" in first and not isinstance(first["input"], dict | list):
            message += f" (got {first['input']!r})"
    more = len(err.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{key}: {message}{suffix}"


def load_config(
    model: type[T],
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Load a recipe: YAML file with its `defaults:` (or `base`), then overrides, then validation against
    `model`."""
    data = dict(base or {})
    if path is not None:
        data.update(read_composed(path))
    data = apply_overrides(data, overrides)
    return validate(model, data, source=path or "<command line>")


def dump_config(config: BaseModel) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (for manifests)."""
    return config.model_dump(mode="json")
