"""Batched, resumable generation (Hugging Face backend; vLLM optional), and `unmirage generate` over VLGuard
files (`generate.vlguard`). `make_answerer` loads a model and builds its generator in one call."""

from unmirage.generate.backends import make_answerer
from unmirage.generate.batched import (
    BatchedGenerator,
    GenerationConfig,
    GenItem,
    merge_shards,
    run_generation,
)

__all__ = [
    "BatchedGenerator",
    "GenItem",
    "GenerationConfig",
    "make_answerer",
    "merge_shards",
    "run_generation",
]
