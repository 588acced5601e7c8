"""The one exception type users see: a clear, one-line message naming the file, record and field."""

from __future__ import annotations


class UnmirageError(Exception):
    """A user-facing error. The CLI prints `error: <message>` on one line and exits with status 2."""

    def __init__(
        self,
        message: str,
        *,
        file: object | None = None,
        record: object | None = None,
        field: str | None = None,
    ) -> None:
        parts = []
        if file is not None:
            parts.append(str(file))
        if record is not None:
            parts.append(f"record {record}")
        if field is not None:
            parts.append(f"field '{field}'")
        prefix = ": ".join(parts)
        text = f"{prefix}: {message}" if prefix else message
        super().__init__(" ".join(text.split()))
