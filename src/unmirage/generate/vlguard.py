"""`unmirage generate`: answers for the questions of a VLGuard-schema file, one JSON line per (id, shot).

The questions come from `unmirage.data.vlguard.load_samples` (train/test files and attack files alike; a
K-shot file gives K questions per id). `items_from_samples` turns them into generation items, the one
mapping shared with `unmirage eval`: `variant` is the shot index, `meta` copies the case (the subset), the
shot and, for unsafe images, the harmful category and subcategory into every output line.

Generation is `run_generation` (resumable: a rerun adds only what is missing). Under `accelerate launch`
with several processes, each rank generates its shard of the batch plan into `OUT.rank<R>` and rank 0
merges them into `OUT` once every rank is done. `<OUT stem>.manifest.json` records the settings, the input
and output hashes and whether placeholder images stood in for the real ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from unmirage.errors import UnmirageError
from unmirage.generate.batched import (
    GenerationConfig,
    GenItem,
    merge_shards,
    run_generation,
)
from unmirage.settings import GenerateSettings


class Question(Protocol):
    """What `items_from_samples` reads: a `data.vlguard.Sample` or an `eval.EvalPrompt`."""

    @property
    def id(self) -> str: ...
    @property
    def question(self) -> str: ...
    @property
    def image(self) -> str | None: ...
    @property
    def shot(self) -> int: ...
    @property
    def category(self) -> str | None: ...
    @property
    def subcategory(self) -> str | None: ...


def items_from_samples(samples: Sequence[Question], *, case: str, with_images: bool = True) -> list[GenItem]:
    """Generation items for VLGuard questions: `variant` = shot; `meta` = case, shot, category, subcategory.

    With `with_images` the item's image is the question's image path (for an `ImageLoader(root=...)`);
    without, items have no image (placeholder runs).
    """
    items = []
    for s in samples:
        meta: dict[str, Any] = {"case": case, "shot": s.shot}
        if s.category is not None:
            meta.update(category=s.category, subcategory=s.subcategory)
        image = s.image if with_images else None
        items.append(GenItem(id=s.id, question=s.question, image=image, variant=s.shot, meta=meta))
    return items


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the ones `accelerate launch` started (1 process without it)."""

    rank: int = 0
    world: int = 1
    state: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        """Barrier: return when every process got here."""
        if self.state is not None and self.world > 1:
            self.state.wait_for_everyone()


def current_processes() -> Processes:
    """This process's rank and the number of processes (`accelerate.PartialState`; CPU-only machines too).

    A launcher that started several processes which accelerate does not see as one group is an error, so
    that the processes never write the same output file.
    """
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE") or 1)
    if launched != state.num_processes:
        raise UnmirageError(
            f"{launched} processes were launched but accelerate sees {state.num_processes}; "
            "start multi-process generation with `accelerate launch`"
        )
    return Processes(rank=state.process_index, world=state.num_processes, state=state)


def generate_vlguard(
    settings: GenerateSettings,
    out: str | os.PathLike,
    *,
    config: GenerationConfig | None = None,
    processes: Processes | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Answer every question of `settings.subset` in `settings.data` into the JSON-lines file `out`; returns `out`.

    Images: `settings.image_root` (paths relative to it; every image is checked before the model loads) or
    `settings.placeholder_images` (grey stand-ins, recorded). `settings.limit` keeps the first N ids (with all
    their shots). `config` sets decoding beyond the settings (its template, batch size, token budget and
    prefix are the settings'). `processes` defaults to what `accelerate` reports. An existing `out` is
    continued only when its manifest records the same model and settings (`outputs.claim_file`);
    `overwrite` replaces it.
    """
    from unmirage.data.images import ImageLoader
    from unmirage.data.vlguard import load_samples
    from unmirage.generate.backends import make_answerer
    from unmirage.models import resolve_device
    from unmirage.outputs import claim_file, file_identity, folder_path, model_identity
    from unmirage.runs import write_manifest

    out, data, model, adapter = Path(out), settings.data, settings.model, settings.adapter
    image_root, placeholder_images, subset = settings.image_root, settings.placeholder_images, settings.subset
    dtype, backend, limit = settings.dtype, settings.backend, settings.limit
    config = dataclasses.replace(
        config or GenerationConfig(),
        template=settings.template,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        assistant_prefix=settings.assistant_prefix,
        placeholder_images=placeholder_images,
    )
    config.validate()
    samples = load_samples(data, subset)
    if limit is not None:
        keep = set(list(dict.fromkeys(s.id for s in samples))[:limit])
        samples = [s for s in samples if s.id in keep]
    items = items_from_samples(samples, case=subset, with_images=not placeholder_images)
    if image_root is not None:
        ImageLoader(root=Path(image_root)).verify([(s.id, s.image) for s in samples], progress=progress)
    processes = processes or current_processes()
    identity = {
        "model": model_identity(model),
        "adapter": model_identity(adapter),
        "dtype": dtype,
        "backend": backend,
        "data": file_identity(data),
        "subset": subset,
        "image_root": folder_path(image_root),
        "placeholder_images": placeholder_images,
        "template": config.template,
        "system": config.system,
        "max_new_tokens": config.max_new_tokens,
        "assistant_prefix": config.assistant_prefix,
    }
    manifest = out.parent / f"{out.stem}.manifest.json"
    claim_file(
        out,
        manifest,
        command="generate",
        identity=identity,
        overwrite=overwrite,
        inputs=[data, adapter],
        write=processes.main,
    )
    processes.wait()
    device_map = resolve_device()
    if processes.world > 1:  # every rank on its own device
        device_map = None if str(processes.state.device).startswith("cpu") else str(processes.state.device)
    generator = make_answerer(
        model, config, image_root=image_root, backend=backend, dtype=dtype, device=device_map, adapter=adapter
    )
    run_generation(generator, items, out, progress=progress, rank=processes.rank, world=processes.world)
    processes.wait()
    if processes.main:
        if processes.world > 1:
            merge_shards(out, processes.world, items)
        write_manifest(
            out.parent,
            name=manifest.name,
            command="generate",
            identity=identity,
            output=out.name,
            config={
                "model": model,
                "adapter": str(adapter) if adapter else None,
                "dtype": dtype,
                "backend": backend,
                "subset": subset,
                "limit": limit,
                **dataclasses.asdict(config),
                "decoding": "greedy",
            },
            inputs=[data],
            outputs=[out],
            seed=None,
            images={
                "image_root": str(image_root) if image_root is not None else None,
                "placeholder_images": placeholder_images,
            },
            items=len(items),
            processes=processes.world,
        )
    processes.wait()
    return out
