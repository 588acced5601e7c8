"""Collation for training: images processed at collate time, labels on the answer tokens only.

`Collator` turns `Example`s (`unmirage.data.conversations`, what `load_examples` returns) into a model batch
(input_ids, attention_mask, labels, pixel values and whatever else the processor returns). Images are loaded
by the collator's `image_loader` (default `data.images.ImageLoader()`, paths as given; pass
`ImageLoader(root=DIR)` for the relative paths of conversation files). `PairedDataset` + `PairedCollator` feed unlearning methods with
`{"forget": batch, "retain": batch}`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch.utils.data import Dataset

from unmirage.data.conversations import Example
from unmirage.data.images import ImageLoader, LoadImage
from unmirage.errors import UnmirageError
from unmirage.placeholder import placeholder_image, placeholder_size

if TYPE_CHECKING:
    from unmirage.models import LoadedModel

IGNORE_INDEX = -100
#: Distinct (question, has image) prompts a collator keeps rendered.
PROMPT_CACHE_SIZE = 65536


class Collator:
    """Builds padded training batches whose labels cover exactly the answer tokens (and the end-of-turn).

    The answer's token count is measured on the text before image-token expansion (prompt vs prompt+answer),
    so it is exact whatever the image size; a tokenizer that merges tokens across the prompt/answer boundary
    is detected and reported. Sequences are right-padded; a sequence longer than `max_length` loses answer
    tokens from its end, and one whose prompt (image tokens included) does not fit is an error.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        template: str = "v1",
        max_length: int = 2048,
        image_loader: LoadImage | None = None,
        placeholder_images: bool = False,
        system: str | None = None,
    ) -> None:
        self.loaded = loaded
        self.family = loaded.family
        self.processor = loaded.processor
        self.tokenizer = loaded.tokenizer
        self.template = template
        self.max_length = max_length
        self.image_loader = image_loader or ImageLoader()
        self.placeholder_images = placeholder_images
        self.system = system
        self._prompts: dict[tuple[str, bool], str] = {}

    def _image(self, example: Example) -> Image.Image | None:
        if not self.family.multimodal:
            return None
        image = self.image_loader(example.image, example.id)
        if image is None and self.placeholder_images:
            image = placeholder_image(placeholder_size(self.processor))
        return image

    def answer_token_counts(
        self, prompts: Sequence[str], fulls: Sequence[str], examples: Sequence[Example]
    ) -> list[int]:
        """Tokens that each answer adds to its prompt (checked to be a clean suffix); one batched tokenizer
        call per side."""
        prompt_ids = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        full_ids = self.tokenizer(list(fulls), add_special_tokens=True)["input_ids"]
        counts = []
        for prompt, full, example in zip(prompt_ids, full_ids, examples):
            if full[: len(prompt)] != prompt:
                raise UnmirageError(
                    "the tokenizer merges the prompt's last token with the answer; labels would be "
                    "misaligned (use another template)",
                    record=example.id,
                )
            counts.append(len(full) - len(prompt))
        return counts

    def _images(self, examples: Sequence[Example]) -> tuple[list[Image.Image | None], list[bool]]:
        """Each example's image (None for text-only models) and whether it has one; all or none must."""
        if not examples:
            raise UnmirageError("cannot collate an empty batch")
        images = [self._image(e) for e in examples]
        has_image = [img is not None for img in images]
        if any(has_image) and not all(has_image):
            raise UnmirageError(
                "a batch mixes examples with and without images "
                f"(e.g. record {examples[has_image.index(False)].id}); use placeholder_images"
            )
        return images, has_image

    def _prompt(self, example: Example, with_image: bool) -> str:
        key = (example.question, with_image)
        prompt = self._prompts.get(key)
        if prompt is None:  # rendering a chat template costs about as much as tokenizing the text
            prompt = self.family.build_prompt(
                example.question,
                template=self.template,
                processor=self.processor,
                has_image=with_image,
                system=self.system,
            )
            if len(self._prompts) < PROMPT_CACHE_SIZE:
                self._prompts[key] = prompt
        return prompt

    def check_prompts_fit(self, examples: Sequence[Example], what: str) -> None:
        """Fail before training, not at the batch that holds it, when a prompt (image tokens included) is longer
        than `max_length`: a one-line error naming the longest prompt's record and the length to set. Text is
        tokenized in one call; a model's image tokens are counted once, on the first example, so the check is
        exact when every image takes as many tokens (LLaVA-class models, placeholder images) and the per-batch
        check still guards a model whose image tokens vary with the image size."""
        if not examples:
            return
        with_image = self._image(examples[0]) is not None
        prompts = [self._prompt(e, with_image) for e in examples]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        if with_image:  # the processor expands the image placeholder into the image's tokens
            encoded = self.encode_prompts(examples[:1])
            lengths = [n + int(encoded["attention_mask"][0].sum()) - lengths[0] for n in lengths]
        longest = max(range(len(examples)), key=lengths.__getitem__)
        if lengths[longest] > self.max_length:
            too_long = sum(n > self.max_length for n in lengths)
            raise UnmirageError(
                f"{too_long} of {len(examples)} {what} prompts are longer than max_length {self.max_length} (image tokens "
                f"included; truncation would cut the image or question); the longest has {lengths[longest]} "
                f"tokens: set data.max_length to at least {lengths[longest]}",
                record=examples[longest].id,
            )

    def encode_prompts(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Right-padded model inputs of the examples' prompts alone (no answer, no labels): each row's last
        prompt token is at `attention_mask.sum() - 1`, and padding never shifts a real token's position."""
        images, has_image = self._images(examples)
        texts = [self._prompt(e, with_image) for e, with_image in zip(examples, has_image)]
        return self._encode(texts, images if all(has_image) else None)

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        images, has_image = self._images(examples)
        prompts = [self._prompt(e, with_image) for e, with_image in zip(examples, has_image)]
        texts = [
            prompt + self.family.answer_text(e.answer, template=self.template, processor=self.processor)
            for prompt, e in zip(prompts, examples)
        ]
        n_answer = self.answer_token_counts(prompts, texts, examples)
        batch = self._encode(texts, images if all(has_image) else None)
        return self._labels_and_truncate(batch, n_answer, examples)

    def _encode(self, texts: list[str], images: list[Image.Image] | None) -> dict[str, torch.Tensor]:
        tokenizer = self.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "right"
        try:
            if images is not None:
                batch = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
            elif self.family.multimodal:
                batch = self.processor(text=texts, padding=True, return_tensors="pt")
            else:
                batch = tokenizer(texts, padding=True, return_tensors="pt")
        finally:
            tokenizer.padding_side = side
        return dict(batch)

    def _labels_and_truncate(
        self, batch: dict[str, torch.Tensor], n_answer: list[int], examples: Sequence[Example]
    ) -> dict[str, torch.Tensor]:
        input_ids, attention = batch["input_ids"], batch["attention_mask"]
        lengths = attention.sum(dim=1)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        image_mask = self.family.image_mask(input_ids, self.loaded.model)
        for row, (length, count) in enumerate(zip(lengths.tolist(), n_answer)):
            prompt_len = length - count
            if prompt_len > self.max_length:
                raise UnmirageError(
                    f"the prompt has {prompt_len} tokens (image tokens included) but max_length is "
                    f"{self.max_length}; truncation would cut the image or question",
                    record=examples[row].id,
                )
            labels[row, prompt_len:length] = input_ids[row, prompt_len:length]
        if input_ids.shape[1] > self.max_length:
            batch = {
                k: (
                    v[:, : self.max_length]
                    if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == input_ids.shape[1]
                    else v
                )
                for k, v in batch.items()
            }
            labels = labels[:, : self.max_length]
            image_mask = image_mask[:, : self.max_length]
        if (labels[image_mask] != IGNORE_INDEX).any():
            raise UnmirageError("internal error: an image token was labelled")
        batch["labels"] = labels
        if all(e.index >= 0 for e in examples):
            batch["index"] = torch.tensor([e.index for e in examples], dtype=torch.long)
        return batch


class PairedDataset(Dataset):
    """Pairs each retain example with a forget example; epochs run over `epoch_over` and the other side cycles.

    The reference counts epochs over the retain set (`epoch_over="retain"`); the cycling side follows a
    seeded permutation that is reshuffled on every pass.
    """

    def __init__(
        self,
        forget: Sequence[Example],
        retain: Sequence[Example],
        *,
        epoch_over: str = "retain",
        seed: int = 0,
    ) -> None:
        if not forget:
            raise UnmirageError("the forget set is empty")
        if not retain:
            raise UnmirageError("the retain set is empty")
        if epoch_over not in ("retain", "forget", "max"):
            raise UnmirageError(f"epoch_over must be retain, forget or max (got '{epoch_over}')")
        self.forget = with_indices(forget)
        self.retain = with_indices(retain)
        self.length = {"retain": len(retain), "forget": len(forget), "max": max(len(forget), len(retain))}[
            epoch_over
        ]
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def _cycled(self, items: list[Example], i: int) -> Example:
        n = len(items)
        if i < n and self.length <= n:
            return items[i]
        rng = random.Random(self.seed * 1_000_003 + i // n)
        order = list(range(n))
        rng.shuffle(order)
        return items[order[i % n]]

    def __getitem__(self, i: int) -> dict[str, Example]:
        return {"forget": self._cycled(self.forget, i), "retain": self._cycled(self.retain, i)}


def _with_index(example: Example, index: int) -> Example:
    return example if example.index == index else dataclasses.replace(example, index=index)


def with_indices(examples: Sequence[Example]) -> list[Example]:
    """The examples with `index` set to their position (what the collator returns as `batch["index"]`)."""
    return [_with_index(e, i) for i, e in enumerate(examples)]


class PairedCollator:
    """Collates items side by side: `{"forget": ex, "retain": ex}` -> `{"forget": batch, "retain": batch}`
    (retain-only items give `{"retain": batch}`)."""

    def __init__(self, collator: Collator) -> None:
        self.collator = collator

    def __call__(self, items: Sequence[dict[str, Example]]) -> dict[str, dict[str, torch.Tensor]]:
        return {side: self.collator([item[side] for item in items]) for side in items[0]}
