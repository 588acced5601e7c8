"""Choose a generation backend by name: `hf` (transformers, CPU or GPU) or `vllm` (GPU), and build the
answerer every command generates with (`make_answerer`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unmirage.errors import UnmirageError
from unmirage.generate.batched import BatchedGenerator, GenerationConfig

if TYPE_CHECKING:
    from unmirage.models import LoadedModel

BACKENDS = ("hf", "vllm")


def load_for_generation(
    model: str,
    *,
    backend: str = "hf",
    dtype: str = "auto",
    device_map: Any = None,
    adapter: str | os.PathLike | None = None,
) -> Any:
    """Load `model` for generation with the named backend (a `LoadedModel`)."""
    if backend not in BACKENDS:
        raise UnmirageError(f"unknown generation backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "vllm":
        if adapter is not None:
            raise UnmirageError(
                "the vLLM backend takes merged weights: write them with `unmirage unlearn ... "
                "--merge` (or use backend=hf with adapter)"
            )
        from unmirage.generate.vllm import load_for_vllm

        return load_for_vllm(str(model), dtype=dtype)
    from unmirage.models import load_model

    return load_model(model, dtype=dtype, device_map=device_map, adapter=adapter)


def make_answerer(
    model: str | os.PathLike | LoadedModel,
    config: GenerationConfig | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    backend: str = "hf",
    dtype: str = "auto",
    device: str | dict | None = "auto",
    adapter: str | os.PathLike | None = None,
) -> BatchedGenerator:
    """A greedy batched answerer: `model` (a name or folder to load, or a `LoadedModel` already loaded)
    answering `GenItem`s with `config` (default: the reference protocol's `GenerationConfig()`).

    Item images are paths relative to `image_root` when it is given, else paths as given or PIL images
    (`data.images.ImageLoader`). A model given by name is loaded with `backend` (`hf` or `vllm`), `dtype`,
    `adapter` (a LoRA folder) and on `device` ("auto": the GPU when there is one; "cpu"; or a
    `device_map`); these are ignored for a `LoadedModel`. The generator class fits the backend the model
    was loaded with (`VLLMGenerator` for vLLM). Call it on a list of items (rows in memory) or pass it to
    `run_generation` (a resumable JSON-lines file).
    """
    from unmirage.data.images import ImageLoader

    if isinstance(model, str | os.PathLike):
        from unmirage.models import resolve_device

        device_map = resolve_device(device) if isinstance(device, str) else device
        model = load_for_generation(
            model, backend=backend, dtype=dtype, device_map=device_map, adapter=adapter
        )
    loader = ImageLoader(root=Path(image_root)) if image_root is not None else ImageLoader()
    if model.info.get("backend") == "vllm":
        from unmirage.generate.vllm import VLLMGenerator

        return VLLMGenerator(model, config, image_loader=loader)
    return BatchedGenerator(model, config, image_loader=loader)
