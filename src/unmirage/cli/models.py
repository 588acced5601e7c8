"""`unmirage models ...`: build tiny models of the real classes."""

from __future__ import annotations

from pathlib import Path

import typer

models_app = typer.Typer(
    help="Model utilities: tiny random models of the real classes for tests and demos.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@models_app.command("tiny")
def tiny(
    family: str = typer.Option("llava", help="Model family: llava or qwen2_5_vl."),
    out: Path = typer.Option(..., help="Folder to write the model (safetensors) and its processor to."),
    layers: int = typer.Option(2, help="Decoder layers of the language model."),
    hidden: int = typer.Option(64, help="Hidden size of the language model."),
    heads: int = typer.Option(2, help="Attention heads of the language model."),
    vision_layers: int = typer.Option(2, help="Layers of the vision tower."),
    vision_hidden: int = typer.Option(32, help="Hidden size of the vision tower."),
    image_size: int = typer.Option(32, help="Input image size in pixels."),
    patch_size: int = typer.Option(8, help="Vision patch size in pixels."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
) -> None:
    """Build a tiny random model of the real class with an offline-trained tokenizer, and save it."""
    from unmirage.models.tiny import save_tiny

    path = save_tiny(
        out,
        family,
        layers=layers,
        hidden=hidden,
        heads=heads,
        vision_layers=vision_layers,
        vision_hidden=vision_hidden,
        image_size=image_size,
        patch_size=patch_size,
        seed=seed,
    )
    typer.echo(f"wrote tiny {family} to {path}")
