"""`data mine-harmful` with real (or tiny) models: batched greedy generators, a text judge, the whole run.

The selection logic and the resumable bookkeeping are in `unmirage.data.mine`; this module only turns model
sources into the callables it expects. Models are loaded on first use and released when their stage ends,
so several generators never sit in memory together, and a resumed run whose stages are done loads nothing.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unmirage.data.build import forget_samples
from unmirage.data.images import ImageLoader
from unmirage.data.mine import Message, mine_harmful
from unmirage.data.vlguard import Sample, load_vlguard
from unmirage.errors import UnmirageError
from unmirage.models.load import source_is_multimodal
from unmirage.runs import write_manifest
from unmirage.settings import MineSettings


def _release() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelCandidateGenerator:
    """A `CandidateGenerator` backed by `unmirage.generate.BatchedGenerator` (greedy, batched)."""

    def __init__(
        self,
        source: str,
        *,
        image_root: Path | None,
        placeholder_images: bool = False,
        template: str = "v1",
        max_new_tokens: int = 256,
        batch_size: int = 16,
        dtype: str = "auto",
        device_map: str | None = None,
    ) -> None:
        self.source = source
        self.image_root = image_root
        self.placeholder_images = placeholder_images
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.dtype = dtype
        self.device_map = device_map
        self._generator: Any = None

    def _load(self) -> Any:
        from unmirage.generate import GenerationConfig, make_answerer

        config = GenerationConfig(
            template=self.template,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            placeholder_images=self.placeholder_images,
        )
        root = None if self.placeholder_images else self.image_root
        return make_answerer(self.source, config, image_root=root, dtype=self.dtype, device=self.device_map)

    def __call__(self, batch: Sequence[Sample]) -> list[str]:
        from unmirage.generate import GenItem

        if self._generator is None:
            self._generator = self._load()
        images = [None if self.placeholder_images else s.image for s in batch]  # None: the grey placeholder
        items = [
            GenItem(id=s.id, question=s.question, image=image) for s, image in zip(batch, images, strict=True)
        ]
        return [row["answer"] for row in self._generator(items)]

    def close(self) -> None:
        """Free the model."""
        self._generator = None
        _release()


class ModelJudge:
    """A `Judge` backed by a text model: each chat is (system, user), answered greedily by a local
    `unmirage.judges.HFBackend` (loaded on first use)."""

    def __init__(
        self,
        source: str,
        *,
        template: str = "chat",
        max_new_tokens: int = 100,
        batch_size: int = 8,
        dtype: str = "auto",
        device_map: str | None = None,
    ) -> None:
        self.source = source
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.dtype = dtype
        self.device_map = device_map
        self._backend: Any = None

    def __call__(self, chats: Sequence[list[Message]]) -> list[str]:
        from unmirage.llm import ChatRequest, HFBackend

        if any([m.get("role") for m in chat] != ["system", "user"] for chat in chats):
            raise UnmirageError("a judge chat must be one system and one user message")
        if self._backend is None:
            from unmirage.models import load_model

            loaded = load_model(self.source, dtype=self.dtype, device_map=self.device_map)
            self._backend = HFBackend(
                self.source,
                dtype=self.dtype,
                batch_size=self.batch_size,
                template=self.template,
                loaded=loaded,
            )
        requests = [
            ChatRequest(text=chat[1]["content"], system=chat[0]["content"], max_tokens=self.max_new_tokens)
            for chat in chats
        ]
        return [reply.text or "" for reply in self._backend.chat(requests)]

    def close(self) -> None:
        """Free the model."""
        self._backend = None
        _release()


def run_mine_harmful(settings: MineSettings, out: str | os.PathLike, *, progress: bool = True) -> Path:
    """Mine harmful answers for the questions of `settings.subset` in `settings.vlguard` (the unsafe records
    by default); writes `out` and a manifest."""
    out = Path(out)
    vlguard, generators, judge = settings.vlguard, settings.generators, settings.judge
    image_root, placeholder_images = settings.image_root, settings.placeholder_images
    template, batch_size, dtype = settings.template, settings.batch_size, settings.dtype
    max_new_tokens = settings.max_new_tokens
    if image_root is None and not placeholder_images and any(source_is_multimodal(g) for g in generators):
        raise UnmirageError("give either image_root or placeholder_images (for text-only experiments)")
    samples = forget_samples(load_vlguard(vlguard, kind="plain", allow_duplicate_ids=True), settings.subset)
    root = Path(image_root) if image_root is not None else None
    if root is not None:
        ImageLoader(root=root).verify([(s.id, s.image) for s in samples], progress=progress)
    from unmirage.models import resolve_device

    device_map = resolve_device(settings.device)
    decoding = {"template": template, "batch_size": batch_size, "dtype": dtype, "device_map": device_map}
    gens = {
        src: ModelCandidateGenerator(
            src,
            image_root=root,
            placeholder_images=placeholder_images,
            max_new_tokens=max_new_tokens,
            **decoding,
        )
        for src in generators
    }
    judge_fn = None
    if judge is not None and len(generators) > 1:
        judge_fn = ModelJudge(
            judge,
            template=settings.judge_template,
            max_new_tokens=settings.judge_max_new_tokens,
            batch_size=batch_size,
            dtype=dtype,
            device_map=device_map,
        )
    answers = mine_harmful(
        samples, gens, judge_fn, out, judge_name=judge, batch_size=batch_size, progress=progress
    )
    config = settings.model_dump(mode="json", exclude={"image_root", "placeholder_images"})
    write_manifest(
        out.parent,
        name=f"{out.stem}.manifest.json",
        command="data mine-harmful",
        config=config,
        inputs=[vlguard],
        outputs=[out],
        seed=None,
        samples=len(answers),
        choices={str(k): v for k, v in sorted(Counter(a.choice for a in answers).items())},
        images={
            "image_root": str(root) if root is not None else None,
            "placeholder_images": placeholder_images,
        },
        decoding="greedy",
    )
    return out
