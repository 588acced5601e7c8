"""The LLaVA conversation format, read and written; also the format of the forget/retain files.

A file is a JSON list of ``{"id", "image"?, "conversations": [{"from": "human", "value"}, {"from": "gpt",
"value"}, ...]}``. Turns alternate human/gpt starting with human. A conversation with an image has exactly
one ``<image>`` token, in a human turn; one without an image has none. Other keys of a record are ignored.

For training, `load_examples` turns a file back into (id, image, question, answer) examples: the `<image>`
token and the whitespace around it are removed from the question, and a multi-turn conversation gives one
example per (human, gpt) exchange (`Example.turn` = 0, 1, ...), each with the conversation's image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unmirage.data.jsonfile import json_type, read_json_list, require_str, short
from unmirage.errors import UnmirageError
from unmirage.runs import atomic_write_json

IMAGE_TOKEN = "<image>"
HUMAN = "human"
GPT = "gpt"
Role = Literal["human", "gpt"]


@dataclass(frozen=True)
class Turn:
    """One message: `role` is "human" or "gpt" (the LLaVA `from` field)."""

    role: Role
    value: str


@dataclass(frozen=True)
class Conversation:
    """One LLaVA record."""

    id: str
    image: str | None
    turns: tuple[Turn, ...]

    def to_json(self) -> dict[str, Any]:
        """The record as LLaVA JSON."""
        record: dict[str, Any] = {"id": self.id}
        if self.image is not None:
            record["image"] = self.image
        record["conversations"] = [{"from": t.role, "value": t.value} for t in self.turns]
        return record


@dataclass(frozen=True)
class Example:
    """One (image, question, answer) example: what the data loaders return and training collates.

    `question` has no image token (the prompt builder puts the image where the model family wants it).
    `image` is a path (relative to an image root, or as given), a PIL image, or None (text only); the
    collator loads it with its `image_loader` (`unmirage.data.images`). `turn` numbers the exchanges of a
    multi-turn conversation. `index` is the example's position in its training set (-1: not set;
    `collate.PairedDataset` sets it and the collator returns it as `batch["index"]`).
    """

    id: str
    question: str
    answer: str
    image: Any = None
    turn: int = 0
    index: int = -1


def single_turn(id: str, image: str | None, question: str, answer: str) -> Conversation:
    """A one-exchange conversation; with an image the question is prefixed by ``<image>\\n`` (LLaVA style)."""
    text = f"{IMAGE_TOKEN}\n{question}" if image is not None else question
    return Conversation(id=id, image=image, turns=(Turn(HUMAN, text), Turn(GPT, answer)))


def strip_image_token(text: str) -> str:
    """The question text without the image token and the whitespace around it."""
    return text.replace(IMAGE_TOKEN, "").strip()


def parse_conversation(raw: Any, index: int, file: object) -> Conversation:
    """Validate one raw LLaVA record; any problem is a one-line error naming file, record and field."""
    rid = raw.get("id") if isinstance(raw, dict) else None
    label = f"{index} (id {rid})" if isinstance(rid, str | int) and not isinstance(rid, bool) else str(index)
    if not isinstance(raw, dict):
        raise UnmirageError(f"expected a JSON object, got {json_type(raw)}", file=file, record=label)
    if "id" not in raw:
        raise UnmirageError("required field is missing", file=file, record=label, field="id")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or (isinstance(rid, str) and not rid.strip()):
        raise UnmirageError(
            f"expected a non-empty string or integer, got {json_type(rid)} {short(rid)}",
            file=file,
            record=label,
            field="id",
        )
    image = require_str(raw, "image", file=file, record=label) if raw.get("image") is not None else None
    turns_raw = raw.get("conversations")
    if not isinstance(turns_raw, list) or not turns_raw:
        got = "missing" if "conversations" not in raw else f"{json_type(turns_raw)} {short(turns_raw)}"
        raise UnmirageError(
            f"expected a non-empty list of turns, got {got}", file=file, record=label, field="conversations"
        )
    if len(turns_raw) % 2:
        raise UnmirageError(
            f"expected human/gpt pairs, got {len(turns_raw)} turns",
            file=file,
            record=label,
            field="conversations",
        )
    turns = []
    for i, turn in enumerate(turns_raw):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise UnmirageError(
                f"expected a JSON object, got {json_type(turn)}", file=file, record=label, field=where
            )
        expected = HUMAN if i % 2 == 0 else GPT
        role = turn.get("from")
        if role != expected:
            raise UnmirageError(
                f'expected "from": "{expected}", got {short(role)}', file=file, record=label, field=where
            )
        value = require_str(turn, "value", file=file, record=label, field=f"{where}.value", allow_empty=True)
        turns.append(Turn(role=expected, value=value))
    tokens = [i for i, t in enumerate(turns) for _ in range(t.value.count(IMAGE_TOKEN))]
    if image is not None and (len(tokens) != 1 or turns[tokens[0]].role != HUMAN):
        raise UnmirageError(
            f"a record with an image needs exactly one {IMAGE_TOKEN} token in a human turn, found {len(tokens)}",
            file=file,
            record=label,
            field="conversations",
        )
    if image is None and tokens:
        raise UnmirageError(
            f"{IMAGE_TOKEN} token in a record without an image",
            file=file,
            record=label,
            field="conversations",
        )
    return Conversation(id=str(rid), image=image, turns=tuple(turns))


def read_conversations(path: str | os.PathLike) -> list[Conversation]:
    """Read and validate a LLaVA conversation file (a non-empty JSON list)."""
    path = Path(path)
    return parse_conversations(read_json_list(path, "LLaVA conversation records"), path)


def parse_conversations(raws: Sequence[Any], path: str | os.PathLike) -> list[Conversation]:
    """Validate already-parsed JSON records of the file `path` (named in errors)."""
    return [parse_conversation(raw, i, path) for i, raw in enumerate(raws)]


def write_conversations(path: str | os.PathLike, conversations: Iterable[Conversation]) -> Path:
    """Write conversations as a LLaVA JSON list, atomically (readers see the old file or the whole new one)."""
    path = Path(path)
    atomic_write_json(path, [c.to_json() for c in conversations])
    return path


def to_examples(
    conversations: Sequence[Conversation], *, multi_turn: Literal["split", "first", "error"] = "split"
) -> list[Example]:
    """Question/answer examples from conversations.

    multi_turn: "split" makes one example per exchange, "first" keeps only the first exchange, "error"
    refuses conversations with more than one exchange.
    """
    examples = []
    for conv in conversations:
        pairs = [(conv.turns[i], conv.turns[i + 1]) for i in range(0, len(conv.turns), 2)]
        if len(pairs) > 1 and multi_turn == "error":
            raise UnmirageError(
                f"conversation has {len(pairs)} exchanges; expected one", record=f"id {conv.id}"
            )
        if multi_turn == "first":
            pairs = pairs[:1]
        for turn, (human, gpt) in enumerate(pairs):
            examples.append(
                Example(
                    id=conv.id,
                    image=conv.image,
                    question=strip_image_token(human.value),
                    answer=gpt.value,
                    turn=turn,
                )
            )
    return examples


def load_examples(
    path: str | os.PathLike, *, multi_turn: Literal["split", "first", "error"] = "split"
) -> list[Example]:
    """Read a conversation file (forget.json, retain.json, ...) as training examples (see `to_examples`)."""
    path = Path(path)
    try:
        return to_examples(read_conversations(path), multi_turn=multi_turn)
    except UnmirageError as err:
        if str(err).startswith(str(path)):
            raise
        raise UnmirageError(str(err), file=path) from None
