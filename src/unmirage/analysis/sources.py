"""Reading the text data sets the analyses accept, as a flat list of (instruction, response) turns.

Three formats, detected from the content (or forced with `fmt`):

- `vlguard`: a JSON list (or JSONL) of VLGuard records, read and validated by `unmirage.data.vlguard`. Every
  instruction becomes one turn whose `kind` is `safe_safe` (safe image, `safe_instruction`), `safe_unsafe`
  (safe image, `unsafe_instruction`) or `unsafe` (unsafe image, `instruction`).
- `llava`: a JSON list (or JSONL) of LLaVA conversation records, validated by `unmirage.data.conversations`.
  Every (human, gpt) exchange becomes one turn of kind `turn`; the `<image>` token is removed from the
  instruction.
- `jsonl`: any other JSON list / JSON-lines file of flat objects (generic safety data sets: a text field and a
  label field). Every row is one turn of kind `row`; its fields are kept in `fields`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unmirage.data.conversations import parse_conversations, to_examples
from unmirage.data.jsonfile import read_json
from unmirage.data.vlguard import SafeImageRecord, VLGuardFile, parse_vlguard
from unmirage.errors import UnmirageError
from unmirage.runs import read_jsonl

FORMATS = ("auto", "vlguard", "llava", "jsonl")


@dataclass(frozen=True)
class SourceTurn:
    """One instruction (and its response, when the data set has one) with where it came from."""

    record_id: str
    index: int
    kind: str
    instruction: str | None
    response: str | None
    image: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def text(self, name: str) -> Any:
        """The value of `name`: `instruction`, `response`, or (for generic rows) any field of the row."""
        if name == "instruction":
            return self.instruction
        if name == "response":
            return self.response
        return self.fields.get(name)


def _read_json_or_jsonl(path: str | os.PathLike) -> list[Any]:
    """A JSON list (`unmirage.data.jsonfile.read_json`) or JSON-lines rows (`runs.read_jsonl`)."""
    path = Path(path)
    if not path.is_file():
        raise UnmirageError("file not found", file=path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("["):
        data = read_json(path)
        if not isinstance(data, list):
            raise UnmirageError("expected a JSON list or JSON-lines rows", file=path)
        return data
    return read_jsonl(path)


def detect_format(records: list[Any]) -> str:
    """`vlguard`, `llava` or `jsonl`, from the first record."""
    if not records:
        return "jsonl"
    first = records[0]
    if isinstance(first, dict) and "instr-resp" in first:
        return "vlguard"
    if isinstance(first, dict) and "conversations" in first:
        return "llava"
    return "jsonl"


def vlguard_turns(data: VLGuardFile) -> list[SourceTurn]:
    """Flatten validated VLGuard records (`unmirage.data.vlguard`) into turns, in file order.

    A safe-image record gives a `safe_safe` turn (index 0) and a `safe_unsafe` turn (index 1); an
    unsafe-image record one `unsafe` turn. `fields` holds the instruction (under its VLGuard key) and response.
    """
    turns = []
    for record in data.records:
        if isinstance(record, SafeImageRecord):
            pairs = [("safe_safe", "safe_instruction", record.safe_pair)]
            pairs.append(("safe_unsafe", "unsafe_instruction", record.unsafe_pair))
        else:
            pairs = [("unsafe", "instruction", record.pair)]
        for index, (kind, key, pair) in enumerate(pairs):
            fields = {key: pair.instruction, "response": pair.response}
            turns.append(
                SourceTurn(record.id, index, kind, pair.instruction, pair.response, record.image, fields)
            )
    return turns


def llava_turns(records: list[Any], path: str | os.PathLike = "<data>") -> list[SourceTurn]:
    """Flatten LLaVA conversation records (validated by `unmirage.data.conversations`) into turns.

    Every (human, gpt) exchange is one turn of kind `turn` (the `<image>` token removed from the question);
    `fields` holds the whole record.
    """
    turns = []
    for raw, conversation in zip(records, parse_conversations(records, path)):
        for example in to_examples([conversation]):
            turns.append(
                SourceTurn(
                    example.id,
                    example.turn,
                    "turn",
                    example.question,
                    example.answer,
                    example.image,
                    dict(raw),
                )
            )
    return turns


def generic_turns(records: list[Any], path: str | os.PathLike = "<data>") -> list[SourceTurn]:
    """One turn per flat JSON object; `instruction`/`response` are filled from common field names."""
    turns = []
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            raise UnmirageError("row is not a JSON object", file=path, record=number)
        instruction = next(
            (record[k] for k in ("prompt", "instruction", "question", "text") if k in record), None
        )
        response = next((record[k] for k in ("response", "answer", "output") if k in record), None)
        record_id = str(record.get("id", number))
        turns.append(
            SourceTurn(record_id, 0, "row", instruction, response, record.get("image"), dict(record))
        )
    return turns


def read_turns(path: str | os.PathLike, fmt: str = "auto") -> tuple[str, list[SourceTurn]]:
    """Read `path` in format `fmt` (or the detected one) and return (format, turns).

    VLGuard records are validated by `unmirage.data.vlguard` (any VLGuard-schema file: repeated ids, as in
    train.json or K-shot attack files, are accepted), LLaVA records by `unmirage.data.conversations`.
    """
    if fmt not in FORMATS:
        raise UnmirageError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    records = _read_json_or_jsonl(path)
    if fmt == "auto":
        fmt = detect_format(records)
    if fmt == "vlguard":
        return fmt, vlguard_turns(parse_vlguard(records, path, kind="plain", allow_duplicate_ids=True))
    if fmt == "llava":
        return fmt, llava_turns(records, path)
    return fmt, generic_turns(records, path)
