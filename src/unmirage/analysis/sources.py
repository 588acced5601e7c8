"""Reading the text data sets the analyses accept, as a flat list of (instruction, response) turns.

Three formats, detected from the content (or forced with `fmt`):

- `vlguard`: a JSON list of VLGuard records (`instr-resp` lists). Every pair becomes one turn whose `kind` is
  `safe_safe` (safe image, `safe_instruction`), `safe_unsafe` (safe image, `unsafe_instruction`) or `unsafe`
  (unsafe image, `instruction`).
- `llava`: a JSON list (or JSONL) of LLaVA conversation records (`conversations` of alternating
  `human`/`gpt` messages). Every human message and the answer after it become one turn of kind `turn`; the
  `<image>` placeholder is removed from the instruction.
- `jsonl`: any other JSON list / JSON-lines file of flat objects (generic safety data sets: a text field and a
  label field). Every row is one turn of kind `row`; its fields are kept in `fields`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unmirage.errors import UnmirageError

FORMATS = ("auto", "vlguard", "llava", "jsonl")
VLGUARD_INSTRUCTION_KEYS = {"safe_instruction": "safe_safe", "unsafe_instruction": "safe_unsafe"}


@dataclass(frozen=True)
class Turn:
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


def read_vlguard_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a VLGuard-schema JSON file (a list of records with `id` and `instr-resp`) with basic checks."""
    data = _read_json_or_jsonl(path)
    for number, record in enumerate(data):
        if not isinstance(record, dict) or not isinstance(record.get("instr-resp"), list):
            raise UnmirageError("not a VLGuard record (no 'instr-resp' list)", file=path, record=number)
        if "id" not in record:
            raise UnmirageError("VLGuard record without 'id'", file=path, record=number)
    return data


def _read_json_or_jsonl(path: str | os.PathLike) -> list[Any]:
    path = Path(path)
    if not path.is_file():
        raise UnmirageError("file not found", file=path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UnmirageError(f"not valid JSON ({err.msg} at line {err.lineno})", file=path) from None
        return data
    from unmirage.runs import read_jsonl

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


def vlguard_entries(
    records: list[dict[str, Any]], path: str | os.PathLike = "<data>"
) -> Iterator[tuple[dict[str, Any], int, str, str]]:
    """Yield (record, index in instr-resp, instruction key, kind) for every instruction of VLGuard records.

    kind: `safe_safe` (`safe_instruction`), `safe_unsafe` (`unsafe_instruction`) or `unsafe` (`instruction`
    of a record whose `safe` is false).
    """
    for number, record in enumerate(records):
        for index, pair in enumerate(record["instr-resp"]):
            if not isinstance(pair, dict):
                raise UnmirageError("instr-resp entry is not an object", file=path, record=number)
            key = next((k for k in VLGUARD_INSTRUCTION_KEYS if k in pair), None)
            if key is not None:
                yield record, index, key, VLGUARD_INSTRUCTION_KEYS[key]
            elif "instruction" in pair:
                yield record, index, "instruction", "unsafe" if record.get("safe") is False else "safe_safe"
            else:
                raise UnmirageError("instr-resp entry has no instruction", file=path, record=number)


def vlguard_turns(records: list[dict[str, Any]], path: str | os.PathLike = "<data>") -> list[Turn]:
    """Flatten VLGuard records into turns (see the module docstring for the kinds)."""
    turns = []
    for record, index, key, kind in vlguard_entries(records, path):
        pair = record["instr-resp"][index]
        turns.append(
            Turn(
                record_id=str(record["id"]),
                index=index,
                kind=kind,
                instruction=pair[key],
                response=pair.get("response"),
                image=record.get("image"),
                fields=pair,
            )
        )
    return turns


def llava_turns(records: list[Any], path: str | os.PathLike = "<data>") -> list[Turn]:
    """Flatten LLaVA conversation records into (human message, following gpt message) turns."""
    turns = []
    for number, record in enumerate(records):
        messages = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(messages, list):
            raise UnmirageError("no 'conversations' list", file=path, record=number)
        record_id = str(record.get("id", number))
        index = 0
        for position, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("from") != "human":
                continue
            answer = messages[position + 1] if position + 1 < len(messages) else None
            response = (
                answer.get("value") if isinstance(answer, dict) and answer.get("from") == "gpt" else None
            )
            question = str(message.get("value", "")).replace("<image>", " ").strip()
            turns.append(
                Turn(record_id, index, "turn", question, response, record.get("image"), dict(record))
            )
            index += 1
    return turns


def generic_turns(records: list[Any], path: str | os.PathLike = "<data>") -> list[Turn]:
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
        turns.append(Turn(record_id, 0, "row", instruction, response, record.get("image"), dict(record)))
    return turns


def read_turns(path: str | os.PathLike, fmt: str = "auto") -> tuple[str, list[Turn]]:
    """Read `path` in format `fmt` (or the detected one) and return (format, turns)."""
    if fmt not in FORMATS:
        raise UnmirageError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    if fmt == "vlguard":
        return fmt, vlguard_turns(read_vlguard_records(path), path)
    records = _read_json_or_jsonl(path)
    if not isinstance(records, list):
        raise UnmirageError("expected a JSON list or JSON-lines rows", file=path)
    if fmt == "auto":
        fmt = detect_format(records)
    if fmt == "vlguard":
        return fmt, vlguard_turns(read_vlguard_records(path), path)
    if fmt == "llava":
        return fmt, llava_turns(records, path)
    return fmt, generic_turns(records, path)
