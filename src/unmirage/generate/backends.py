"""Choose a generation backend by name: `hf` (transformers, CPU or GPU) or `vllm` (GPU)."""

from __future__ import annotations

import os
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
                "--merge` (or use --backend hf with --adapter)"
            )
        from unmirage.generate.vllm import load_for_vllm

        return load_for_vllm(str(model), dtype=dtype)
    from unmirage.models import load_model

    return load_model(model, dtype=dtype, device_map=device_map, adapter=adapter)


def make_generator(
    loaded: LoadedModel, config: GenerationConfig | None = None, image_loader: Any = None
) -> BatchedGenerator:
    """The generator class that fits how `loaded` was loaded."""
    if loaded.info.get("backend") == "vllm":
        from unmirage.generate.vllm import VLLMGenerator

        return VLLMGenerator(loaded, config, image_loader=image_loader)
    return BatchedGenerator(loaded, config, image_loader=image_loader)
