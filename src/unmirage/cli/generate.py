"""`unmirage generate`: answers for the questions of a VLGuard-schema file (resumable JSON lines)."""

from __future__ import annotations

from pathlib import Path

import typer

from unmirage.cli.settings import out_option, overwrite_option, settings_command
from unmirage.settings import GenerateSettings


def register(app: typer.Typer) -> None:
    app.command(
        "generate", help="Answer the questions of a VLGuard file (one JSON line per id and shot; resumable)."
    )(settings_command(GenerateSettings, generate, extra=OWN_OPTIONS))


OWN_OPTIONS = [
    out_option("Output JSON-lines file; <stem>.manifest.json goes next to it."),
    overwrite_option("Replace --out if it exists (a rerun otherwise resumes the same run only)."),
]


def generate(settings: GenerateSettings, *, out: Path, overwrite: bool) -> None:
    """Generate answers; under `accelerate launch` every process takes a shard and rank 0 merges."""
    from unmirage.generate.vlguard import generate_vlguard

    typer.echo(f"wrote {generate_vlguard(settings, out, overwrite=overwrite)}")
