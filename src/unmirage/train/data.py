"""Training examples from the forget/retain files, and the datasets the trainer iterates.

Accepted record forms (a JSON list of objects):
- LLaVA conversations: `{"id", "image", "conversations": [{"from": "human", "value": "<image>\\nQ"},
  {"from": "gpt", "value": "A"}]}` (the first human/gpt pair is used; the `<image>` marker is removed);
- plain: `{"id", "image", "question", "answer"}`.
`image` is relative to the image root and may not escape it; without an image root the examples carry no
image, which `placeholder_images` turns into the processor-sized grey stand-in (flagged in the manifest).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from unmirage.data.collate import Collator, PairedDataset, TrainExample
from unmirage.errors import UnmirageError

IMAGE_MARKER = "<image>"


def _strip_marker(text: str) -> str:
    return text.replace(IMAGE_MARKER, "").strip()


def _record_qa(record: dict[str, Any], path: Path, index: int) -> tuple[str, str]:
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise UnmirageError("must be a list of turns", file=path, record=index, field="conversations")
        human = next((t for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
        gpt = next((t for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if human is None or gpt is None:
            raise UnmirageError(
                "needs a human and a gpt turn", file=path, record=index, field="conversations"
            )
        question, answer = human.get("value"), gpt.get("value")
    else:
        question, answer = record.get("question"), record.get("answer")
    for field, value in (("question", question), ("answer", answer)):
        if not isinstance(value, str):
            raise UnmirageError("missing or not a string", file=path, record=index, field=field)
    return _strip_marker(question), answer


def resolve_image(root: Path, relative: str, path: Path, record: Any) -> Path:
    """`root/relative`, refusing paths that leave `root`."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise UnmirageError(
            f"image path '{relative}' leaves the image root", file=path, record=record, field="image"
        )
    return target


def load_examples(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, limit: int | None = None
) -> list[TrainExample]:
    """Read a forget/retain file into `TrainExample`s (bad files and records are one-line errors)."""
    path = Path(path)
    if not path.is_file():
        raise UnmirageError("data file not found", file=path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnmirageError(f"not valid JSON ({err})", file=path) from None
    if not isinstance(records, list) or not records:
        raise UnmirageError("must be a non-empty JSON list of records", file=path)
    examples = []
    for i, record in enumerate(records[:limit] if limit else records):
        if not isinstance(record, dict):
            raise UnmirageError("is not a JSON object", file=path, record=i)
        question, answer = _record_qa(record, path, i)
        image = None
        if image_root is not None and record.get("image"):
            image = resolve_image(Path(image_root), str(record["image"]), path, record.get("id", i))
        examples.append(
            TrainExample(id=str(record.get("id", i)), question=question, answer=answer, image=image)
        )
    return examples


class RetainOnlyDataset(Dataset):
    """Items `{"retain": example}` for methods that train on one side only (SFT)."""

    def __init__(self, retain: Sequence[TrainExample]) -> None:
        if not retain:
            raise UnmirageError("the retain set is empty")
        self.retain = [
            TrainExample(id=e.id, question=e.question, answer=e.answer, image=e.image, index=i)
            for i, e in enumerate(retain)
        ]

    def __len__(self) -> int:
        return len(self.retain)

    def __getitem__(self, i: int) -> dict[str, TrainExample]:
        return {"retain": self.retain[i]}


class SidesCollator:
    """Collates `{"forget": ex, "retain": ex}` items (or retain-only items) side by side."""

    def __init__(self, collator: Collator) -> None:
        self.collator = collator

    def __call__(self, items: Sequence[dict[str, TrainExample]]) -> dict[str, dict[str, torch.Tensor]]:
        return {side: self.collator([item[side] for item in items]) for side in items[0]}


def build_dataset(
    forget: Sequence[TrainExample] | None, retain: Sequence[TrainExample], *, epoch_over: str, seed: int
) -> Dataset:
    """The paired forget/retain dataset (epochs over `epoch_over`, the other side cycles), or retain-only."""
    if forget is None:
        return RetainOnlyDataset(retain)
    return PairedDataset(forget, retain, epoch_over=epoch_over, seed=seed)
