"""Batched, resumable generation (Hugging Face backend; vLLM optional), and `unmirage generate` over VLGuard
files (`generate.vlguard`)."""

from unmirage.generate.batched import (
    BatchedGenerator,
    GenerationConfig,
    GenItem,
    merge_shards,
    run_generation,
)

__all__ = ["BatchedGenerator", "GenItem", "GenerationConfig", "merge_shards", "run_generation"]
