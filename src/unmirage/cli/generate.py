"""`unmirage generate`: answers for the questions of a VLGuard-schema file (resumable JSON lines)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "generate", help="Answer the questions of a VLGuard file (one JSON line per id and shot; resumable)."
    )(generate)


def generate(
    model: str = typer.Option(..., help="Model: a local folder, a Hub id, or tiny-llava / tiny-qwen2_5_vl."),
    data: Path = typer.Option(
        ..., help="VLGuard-schema file: train/test.json or an attack file (K-shot too)."
    ),
    subset: str = typer.Option("unsafes", help="Questions to answer: unsafes, safe_safes or safe_unsafes."),
    image_root: Path | None = typer.Option(None, help="Folder the records' image paths are relative to."),
    placeholder_images: bool = typer.Option(
        False, help="Grey placeholder images instead of --image-root (text-only run; recorded)."
    ),
    out: Path = typer.Option(..., help="Output JSON-lines file; <stem>.manifest.json goes next to it."),
    template: str = typer.Option("v1", help="Prompt template: v1 (reference) or chat (the model's own)."),
    batch_size: int = typer.Option(16, help="Generation batch size."),
    max_new_tokens: int = typer.Option(256, help="Maximum new tokens per answer (greedy)."),
    assistant_prefix: str | None = typer.Option(
        None, help="Text the answer is forced to start with (prefill attack); kept in the answer."
    ),
    limit: int | None = typer.Option(None, help="Answer only the first N ids (all their shots)."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, bfloat16, float16."),
    adapter: Path | None = typer.Option(None, help="LoRA adapter folder to apply on top of the model."),
    backend: str = typer.Option(
        "hf", help="Generation backend: hf (transformers) or vllm (GPU, extra 'vllm')."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out if it exists (a rerun otherwise resumes the same run only)."
    ),
) -> None:
    """Generate answers; under `accelerate launch` every process takes a shard and rank 0 merges."""
    from unmirage.generate import GenerationConfig
    from unmirage.generate.vlguard import generate_vlguard

    config = GenerationConfig(
        template=template,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        assistant_prefix=assistant_prefix,
    )
    path = generate_vlguard(
        model,
        data,
        out,
        subset=subset,
        image_root=image_root,
        placeholder_images=placeholder_images,
        config=config,
        limit=limit,
        dtype=dtype,
        adapter=adapter,
        backend=backend,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {path}")
