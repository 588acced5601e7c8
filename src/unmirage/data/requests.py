"""Request labels: which of a benchmark's requests are harmful, per question and rewrite (JSON lines).

`report --request-labels` counts the harmful cases on the labelled-harmful requests only, and `analyze probe
--request-labels` scores the probe on them. The file format and the shipped VLGuard labels: docs/metrics.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unmirage.errors import UnmirageError
from unmirage.runs import loads_strict

Key = tuple[str, int | None]


@dataclass(frozen=True)
class RequestLabels:
    """Harmful / not harmful per request, keyed by (question id, rewrite shot or None for the question as
    asked), read from `path`."""

    path: Path
    harmful: dict[Key, bool]

    def of(self, record: dict[str, Any], kshot: bool) -> bool | None:
        """The label of a judged answer's request (None when the file does not list it): its rewrite's
        (`shot`) in a K-shot case, the question as asked in any other case."""
        shot = record.get("shot") if kshot else None
        return self.harmful.get((str(record.get("id")), None if shot is None else int(shot)))


def read_request_labels(path: str | os.PathLike) -> RequestLabels:
    """Read a request-labels file: JSON lines `{"id": str, "shot": int or null, "harmful": bool}`, `shot` null
    for the question as asked (the normal, prefill and GCG cases) and k for the K-shot attack's rewrite k;
    other fields (a note) are ignored. A bad line is a one-line error naming the file, the line
    and the field; a request listed twice is an error."""
    path = Path(path)
    if not path.is_file():
        raise UnmirageError("request-labels file not found", file=path)
    harmful: dict[Key, bool] = {}
    lines: dict[Key, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"on line {number}"
        try:
            row = loads_strict(line)
        except ValueError:
            raise UnmirageError("not JSON", file=path, record=where) from None
        if not isinstance(row, dict):
            raise UnmirageError("a line must be a JSON object", file=path, record=where)
        if not isinstance(row.get("id"), str) or not row["id"]:
            raise UnmirageError("'id' must be non-empty text", file=path, record=where, field="id")
        shot = row.get("shot")
        if shot is not None and (isinstance(shot, bool) or not isinstance(shot, int) or shot < 0):
            raise UnmirageError(
                "'shot' must be a rewrite number (0, 1, ...) or null", file=path, record=where, field="shot"
            )
        if not isinstance(row.get("harmful"), bool):
            raise UnmirageError("'harmful' must be true or false", file=path, record=where, field="harmful")
        key = (row["id"], shot)
        if key in lines:
            raise UnmirageError(f"request repeats line {lines[key]}", file=path, record=where, field="id")
        lines[key] = number
        harmful[key] = row["harmful"]
    if not harmful:
        raise UnmirageError("request-labels file has no requests", file=path)
    return RequestLabels(path, harmful)
