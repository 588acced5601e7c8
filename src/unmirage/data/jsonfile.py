"""Reading JSON data files with one-line errors, and small field checks shared by the data formats."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unmirage.errors import UnmirageError


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing, unreadable, non-UTF-8, truncated or non-JSON file is a one-line error."""
    path = Path(path)
    if not path.exists():
        raise UnmirageError("file not found", file=path)
    if not path.is_file():
        raise UnmirageError("not a regular file", file=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UnmirageError(f"not UTF-8 text (byte {err.start})", file=path) from None
    except OSError as err:
        raise UnmirageError(f"cannot read ({err.strerror})", file=path) from None
    if not text.strip():
        raise UnmirageError("file is empty", file=path)
    from unmirage.runs import loads_strict

    try:
        return loads_strict(text)
    except json.JSONDecodeError as err:
        hint = " (the file looks truncated)" if err.pos >= len(text.rstrip()) else ""
        raise UnmirageError(
            f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}{hint}", file=path
        ) from None
    except ValueError as err:
        raise UnmirageError(f"not valid JSON: {err}", file=path) from None


def read_json_list(path: str | os.PathLike, what: str) -> list[Any]:
    """Read a JSON file whose top level must be a non-empty list of `what`."""
    data = read_json(path)
    if not isinstance(data, list):
        raise UnmirageError(f"expected a JSON list of {what}, got a JSON {json_type(data)}", file=path)
    if not data:
        raise UnmirageError(f"holds no {what} (empty list)", file=path)
    return data


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def short(value: Any, limit: int = 40) -> str:
    """A short repr of a value for error messages."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_str(
    obj: dict[str, Any],
    key: str,
    *,
    file: object,
    record: object,
    field: str | None = None,
    allow_empty: bool = False,
) -> str:
    """`obj[key]` as a string, or a one-line error naming file, record and field."""
    name = field or key
    if key not in obj:
        raise UnmirageError("required field is missing", file=file, record=record, field=name)
    value = obj[key]
    if not isinstance(value, str):
        raise UnmirageError(
            f"expected a string, got {json_type(value)} {short(value)}", file=file, record=record, field=name
        )
    if not allow_empty and not value.strip():
        raise UnmirageError("must not be empty", file=file, record=record, field=name)
    return value
