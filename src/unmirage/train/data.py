"""Training examples from the forget/retain files (LLaVA conversation format, written by
`unmirage data build-unlearn`), and the datasets the trainer iterates.

Files are read with `unmirage.data.conversations.load_examples` (one example per human/gpt exchange).
`image` is resolved under the image root (`unmirage.data.images.resolve_image_path`: no escaping the root,
missing files are errors before any compute); without an image root the examples carry no image, which
`placeholder_images` turns into the processor-sized grey stand-in (flagged in the manifest).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from torch.utils.data import Dataset

from unmirage.data.collate import PairedDataset, with_indices
from unmirage.data.conversations import Example
from unmirage.errors import UnmirageError


def load_training_examples(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, limit: int | None = None
) -> list[Example]:
    """Read a forget/retain file into `Example`s (bad files, records and images are one-line errors)."""
    from unmirage.data.conversations import load_examples
    from unmirage.data.images import resolve_image_path

    examples = load_examples(path)
    if not examples:
        raise UnmirageError("has no examples", file=path)
    result = []
    for example in examples[:limit] if limit else examples:
        image = None
        if image_root is not None and example.image:
            try:
                image = resolve_image_path(image_root, example.image, example.id)
            except UnmirageError as err:
                raise UnmirageError(str(err), file=path) from None
        name = example.id if example.turn == 0 else f"{example.id}#{example.turn}"
        result.append(dataclasses.replace(example, id=name, image=image, turn=0))
    return result


class RetainOnlyDataset(Dataset):
    """Items `{"retain": example}` for methods that train on one side only (SFT)."""

    def __init__(self, retain: Sequence[Example]) -> None:
        if not retain:
            raise UnmirageError("the retain set is empty")
        self.retain = with_indices(retain)

    def __len__(self) -> int:
        return len(self.retain)

    def __getitem__(self, i: int) -> dict[str, Example]:
        return {"retain": self.retain[i]}


def build_dataset(
    forget: Sequence[Example] | None, retain: Sequence[Example], *, epoch_over: str, seed: int
) -> Dataset:
    """The paired forget/retain dataset (epochs over `epoch_over`, the other side cycles), or retain-only."""
    if forget is None:
        return RetainOnlyDataset(retain)
    return PairedDataset(forget, retain, epoch_over=epoch_over, seed=seed)
