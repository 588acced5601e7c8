"""Batched greedy generation with Hugging Face models: left padding, KV cache, length buckets, resumable.

The batch plan is fixed by the full item list (items sorted by prompt length, longest first), so a resumed run
regenerates exactly the batches an uninterrupted run would have, and its output lines are identical. Each
batch's lines are appended (and fsynced) as soon as it ends; a killed run loses at most one batch. The next
batch's images and tokens are prepared on a background thread while the model generates.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from unmirage.data.images import ImageLoader, LoadImage
from unmirage.errors import UnmirageError
from unmirage.placeholder import placeholder_image, placeholder_size
from unmirage.runs import JsonlAppender, atomic_open, read_jsonl_resumable

if TYPE_CHECKING:
    from unmirage.models import LoadedModel


@dataclass
class GenItem:
    """One prompt to answer. (`id`, `variant`) is unique within a run; `meta` is copied to the output line.

    `image` is whatever the generator's `image_loader` takes: a path (relative to its image root, or as
    given), a PIL image, or None (no image; a grey placeholder with `placeholder_images`).
    `assistant_prefix` overrides the config's prefill for this item ("" for none).
    """

    id: str
    question: str
    image: Any = None
    variant: int | str = 0
    meta: dict[str, Any] = field(default_factory=dict)
    assistant_prefix: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.id), str(self.variant))


@dataclass
class GenerationConfig:
    """How to prompt and decode. The defaults are the reference protocol's (v1 prompt, greedy, 256 tokens)."""

    template: str = "v1"
    max_new_tokens: int = 256
    batch_size: int = 16
    assistant_prefix: str | None = None
    placeholder_images: bool = False
    system: str | None = None
    bucket_by_length: bool = True
    # transformers' KV cache: "static" (allocated once at prompt + max new tokens; in bench/generation.py
    # ahead of the dynamic cache on a 22.6M model, level on a tiny one), None for transformers' dynamic
    # default, or any other name transformers' `GenerationConfig.cache_implementation` takes.
    cache_implementation: str | None = "static"

    def validate(self) -> None:
        from unmirage.models.families.base import TEMPLATES

        if self.template not in TEMPLATES:
            raise UnmirageError(
                f"unknown prompt template '{self.template}' (choose from {', '.join(TEMPLATES)})"
            )
        if self.max_new_tokens < 1:
            raise UnmirageError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.batch_size < 1:
            raise UnmirageError(f"batch_size must be >= 1 (got {self.batch_size})")


class BatchedGenerator:
    """Greedy batched generation for a `LoadedModel`.

    `image_loader` loads each item's image (`data.images.LoadImage`); the default, `ImageLoader()`, opens
    paths as given and passes PIL images through; pass `ImageLoader(root=DIR)` for paths relative to a root.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        config: GenerationConfig | None = None,
        image_loader: LoadImage | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = config or GenerationConfig()
        self.config.validate()
        self.image_loader = image_loader or ImageLoader()
        self.new_tokens = 0  # generated tokens (padding excluded) and seconds in `generate`, for throughput
        self.generate_seconds = 0.0

    # ----- prompts -------------------------------------------------------------------------------------------
    def prompt(self, item: GenItem, has_image: bool) -> str:
        """The prompt text of one item, with the assistant prefix (prefill attack) appended if set."""
        cfg = self.config
        text = self.loaded.family.build_prompt(
            item.question,
            template=cfg.template,
            processor=self.loaded.processor,
            has_image=has_image,
            system=cfg.system,
        )
        prefix = self.prefix_of(item)
        if prefix:
            text += (" " if cfg.template == "v1" else "") + prefix
        return text

    def prefix_of(self, item: GenItem) -> str | None:
        """The assistant prefix of one item: its own, else the config's."""
        return item.assistant_prefix if item.assistant_prefix is not None else self.config.assistant_prefix

    def _image(self, item: GenItem) -> Image.Image | None:
        if not self.loaded.multimodal:
            return None
        image = self.image_loader(item.image, item.id)
        if image is None and self.config.placeholder_images:
            image = placeholder_image(placeholder_size(self.loaded.processor))
        return image

    def plan(self, items: Sequence[GenItem]) -> list[list[GenItem]]:
        """Split items into batches; with bucketing, items of similar prompt length share a batch."""
        keys = [item.key for item in items]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise UnmirageError(f"duplicate (id, variant) {dup} in the generation items")
        order = list(range(len(items)))
        if self.config.bucket_by_length:
            tokenizer = self.loaded.tokenizer
            lengths = [len(tokenizer(item.question, add_special_tokens=False)["input_ids"]) for item in items]
            order.sort(key=lambda i: (-lengths[i], i))
        size = self.config.batch_size
        return [[items[i] for i in order[start : start + size]] for start in range(0, len(order), size)]

    # ----- encoding and decoding ---------------------------------------------------------------------------
    def encode(self, batch: Sequence[GenItem]) -> tuple[dict[str, torch.Tensor], list[bool]]:
        """Left-padded model inputs for a batch (runs on the prefetch thread)."""
        images = [self._image(item) for item in batch]
        with_image = [img is not None for img in images]
        if any(with_image) and not all(with_image):
            missing = batch[with_image.index(False)]
            raise UnmirageError(
                "some items have no image; give image_root or placeholder_images", record=missing.id
            )
        texts = [self.prompt(item, has_image) for item, has_image in zip(batch, with_image)]
        tokenizer = self.loaded.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            if all(with_image) and images:
                inputs = self.loaded.processor(images=images, text=texts, padding=True, return_tensors="pt")
            elif self.loaded.multimodal:
                inputs = self.loaded.processor(text=texts, padding=True, return_tensors="pt")
            else:
                inputs = tokenizer(texts, padding=True, return_tensors="pt")
        finally:
            tokenizer.padding_side = side
        return dict(inputs), with_image

    @torch.inference_mode()
    def generate_batch(self, inputs: dict[str, torch.Tensor]) -> list[str]:
        """Greedy continuations (decoded, special tokens removed, not stripped) for encoded inputs."""
        model = self.loaded.model
        device = self.loaded.device
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        tokenizer = self.loaded.tokenizer
        out = model.generate(
            **inputs,
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            cache_implementation=self.config.cache_implementation,
            pad_token_id=tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        self.new_tokens += (
            int((new != tokenizer.pad_token_id).sum()) if tokenizer.pad_token_id is not None else new.numel()
        )
        return tokenizer.batch_decode(new, skip_special_tokens=True)

    def row(self, item: GenItem, answer: str, has_image: bool) -> dict[str, Any]:
        """The output line of one item."""
        cfg = self.config
        prefix = self.prefix_of(item)
        answer = ((prefix or "") + answer).strip()  # a prefilled answer starts with its prefix
        row = {"id": item.id, "variant": item.variant, "question": item.question, "answer": answer}
        row.update(item.meta)
        row.update(
            {
                "image": str(item.image) if isinstance(item.image, str | os.PathLike) else None,
                "placeholder_image": bool(self.loaded.multimodal and has_image and item.image is None),
                "template": cfg.template,
                "assistant_prefix": prefix,
                "model": self.loaded.source,
            }
        )
        return row

    def iter_batches(self, batches: Sequence[Sequence[GenItem]]) -> Iterator[list[dict[str, Any]]]:
        """Generate batch after batch, preparing the next one on a background thread."""
        if not batches:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.encode, batches[0])
            for i, batch in enumerate(batches):
                inputs, with_image = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(self.encode, batches[i + 1])
                started = time.perf_counter()
                answers = self.generate_batch(inputs)
                self.generate_seconds += time.perf_counter() - started
                yield [
                    self.row(item, answer, has_image)
                    for item, answer, has_image in zip(batch, answers, with_image)
                ]

    def __call__(self, items: Sequence[GenItem], progress: bool = False) -> list[dict[str, Any]]:
        """Answer every item (in memory); rows come back in the items' order."""
        batches = self.plan(items)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for out in _progress(self.iter_batches(batches), total=len(batches), enabled=progress):
            rows.update({(str(r["id"]), str(r["variant"])): r for r in out})
        return [rows[item.key] for item in items]


def _progress(iterable: Iterator, total: int, enabled: bool, desc: str = "generating") -> Iterator:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch")


def shard_of(batches: Sequence[Sequence[GenItem]], rank: int, world: int) -> list[Sequence[GenItem]]:
    """The batches process `rank` of `world` generates (round robin over the length-sorted plan)."""
    return list(batches[rank::world])


def run_generation(
    generator: BatchedGenerator,
    items: Sequence[GenItem],
    out: str | os.PathLike,
    *,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    desc: str = "generating",
) -> Path:
    """Resumable generation into a JSON-lines file, one line per (id, variant); `desc` names the bar.

    Items already in `out` are skipped; a batch that was only partly written is regenerated whole and only its
    missing lines are added, so the final file never holds a duplicate and equals an uninterrupted run's
    lines. With `world > 1` (under `accelerate launch`) each rank writes `out.rank<R>` and rank 0 merges.
    """
    out = Path(out)
    target = out if world == 1 else out.with_name(f"{out.name}.rank{rank}")
    done = {(str(r.get("id")), str(r.get("variant"))) for r in read_jsonl_resumable(target)}
    if world > 1 and out.exists():
        done |= {(str(r.get("id")), str(r.get("variant"))) for r in read_jsonl_resumable(out)}
    batches = shard_of(generator.plan(items), rank, world)
    todo = [b for b in batches if any(item.key not in done for item in b)]
    with JsonlAppender(target) as writer:
        for rows in _progress(
            generator.iter_batches(todo), total=len(todo), enabled=progress and rank == 0, desc=desc
        ):
            writer.write_many([r for r in rows if (str(r["id"]), str(r["variant"])) not in done])
    return target


def merge_shards(out: str | os.PathLike, world: int, items: Sequence[GenItem]) -> Path:
    """Merge rank files into `out` (in item order, deduplicated) and remove them. Run on rank 0 after a barrier."""
    out = Path(out)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for path in [out, *(out.with_name(f"{out.name}.rank{r}") for r in range(world))]:
        for row in read_jsonl_resumable(path):
            rows.setdefault((str(row["id"]), str(row["variant"])), row)
    with atomic_open(out) as handle:
        for item in items:
            if item.key in rows:
                handle.write(json.dumps(rows[item.key], ensure_ascii=False) + "\n")
    for r in range(world):
        out.with_name(f"{out.name}.rank{r}").unlink(missing_ok=True)
    return out
