"""`unmirage data hazard-images` and `unmirage analyze hazard-captions`: the harm in the image."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    from unmirage.cli.analyze import analyze_app
    from unmirage.cli.data import data_app
    from unmirage.cli.models import models_app

    models_app.command(
        "pretrain-vision",
        help="Teach a composed VLM's vision tower the kinds and colours of the hazard pictures (MirageLab's "
        "vision stage) and save the model.",
    )(pretrain_vision)

    data_app.command(
        "hazard-images",
        help="Copy a VLGuard folder with a hazard picture for every unsafe record and a benign one for every "
        "safe record (MirageLab drawings), plus caption files for projector pretraining.",
    )(hazard_images)
    analyze_app.command(
        "hazard-captions",
        help="Can the model tell hazard from benign pictures? Caption choice accuracy on held-out pictures.",
    )(hazard_captions)


def hazard_images(
    vlguard: Path = typer.Option(..., help="Folder with the VLGuard files (train.json, test.json, ...)."),
    out: Path = typer.Option(..., "--out", help="Output folder (the files, images/{train,test}, captions)."),
    files: list[str] = typer.Option(
        None, "--file", help="Files to copy (repeatable; default train.json, test.json and the attack files)."
    ),
    pictures: int = typer.Option(8, help="Distinct pictures per side (hazard, benign) and split."),
    test_pictures: str = typer.Option("heldout", help="heldout (test pictures apart from train) or shared."),
    image_size: int = typer.Option(32, help="Picture side in pixels (the composed VLM's tower: 32)."),
    caption_train: int = typer.Option(512, help="Caption examples per side for projector pretraining."),
    caption_test: int = typer.Option(100, help="Held-out caption examples per side."),
    seed: int = typer.Option(0, help="Seed of the world and the pictures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it holds another copy."),
) -> None:
    from pydantic import ValidationError

    from unmirage.errors import UnmirageError
    from unmirage.lab.hazard import DEFAULT_FILES, HazardConfig, write_hazard_copy

    try:
        config = HazardConfig(
            seed=seed,
            image_size=image_size,
            pictures=pictures,
            test_pictures=test_pictures,
            caption_train=caption_train,
            caption_test=caption_test,
        )
    except ValidationError as err:
        problem = err.errors()[0]
        raise UnmirageError(f"--{str(problem['loc'][0]).replace('_', '-')}: {problem['msg']}") from None
    written = write_hazard_copy(vlguard, out, config, files=files or DEFAULT_FILES, overwrite=overwrite)
    typer.echo(
        f"wrote {len(written.files)} files with hazard/benign images to {written.root} "
        f"(--image-root {written.image_roots['train']} for training, {written.image_roots['test']} for "
        f"test files; captions: {written.captions['train']}, {written.captions['test']})"
    )


def hazard_captions(
    model: str = typer.Option(..., help="Model folder (a composed VLM)."),
    captions: Path = typer.Option(..., help="captions_test.json of `data hazard-images`."),
    image_root: Path = typer.Option(..., help="The hazard copy's images/ folder."),
    out: Path = typer.Option(..., "--out", help="Output folder (hazard_captions.json, manifest.json)."),
    limit: int = typer.Option(None, help="Only the first N caption examples."),
    template: str = typer.Option("chat", help="Prompt template: chat or v1."),
    batch_size: int = typer.Option(16, help="Examples per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it holds another result."),
) -> None:
    from unmirage.errors import UnmirageError
    from unmirage.lab.hazard import caption_choice_accuracy
    from unmirage.models import load_model, resolve_device
    from unmirage.models.load import source_is_multimodal
    from unmirage.outputs import claim_folder, file_identity, folder_path, model_identity
    from unmirage.runs import atomic_write_json, write_manifest

    if not captions.is_file():
        raise UnmirageError("--captions: file not found", file=captions)
    identity = {"model": model_identity(model), "captions": file_identity(captions)}
    identity |= {"image_root": folder_path(image_root), "limit": limit, "template": template}
    if not source_is_multimodal(model):
        raise UnmirageError(f"{model} is a text-only model: it sees no picture")
    claim_folder(
        out, command="analyze hazard-captions", identity=identity, overwrite=overwrite, inputs=[captions]
    )
    loaded = load_model(model, dtype="float32", device_map=resolve_device())
    result = caption_choice_accuracy(
        loaded, captions, image_root, template=template, batch_size=batch_size, limit=limit
    )
    result["model"] = model
    table = out / "hazard_captions.json"
    atomic_write_json(table, result)
    write_manifest(
        out,
        command="analyze hazard-captions",
        identity=identity,
        config=identity,
        inputs=[captions],
        outputs=[table],
    )
    cells = ", ".join(
        f"{side} {result[side]['accuracy']:.1%} [{result[side]['accuracy_ci'][0]:.1%}, "
        f"{result[side]['accuracy_ci'][1]:.1%}] (n={result[side]['n']})"
        for side in ("hazard", "benign", "all")
        if side in result
    )
    typer.echo(
        f"caption choice accuracy: {cells}; mean margin {result['mean_margin_nats']:.3f} nats; "
        f"hazard/benign separation AUC {result['auc']:.3f}"
    )
    typer.echo(f"wrote {table}")


def pretrain_vision(
    model: str = typer.Option(..., help="VLM folder (e.g. a composed SmolLM2 VLM)."),
    out: Path = typer.Option(..., "--out", help="Folder for the model with the trained vision tower."),
    steps: int = typer.Option(1000, help="Optimizer steps of 64 pictures."),
    seed: int = typer.Option(0, help="The world's seed: the same as `data hazard-images --seed`."),
    image_size: int = typer.Option(32, help="Picture side: the same as `data hazard-images --image-size`."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it holds an unmirage model."),
) -> None:
    from unmirage.lab.hazard import HazardConfig, pretrain_hazard_vision

    result = pretrain_hazard_vision(
        model, out, HazardConfig(seed=seed, image_size=image_size), steps=steps, overwrite=overwrite
    )
    typer.echo(
        f"vision tower: kind accuracy {result['held_out_kind_accuracy']:.1%}, hazard vs benign "
        f"{result['held_out_hazard_accuracy']:.1%} on {result['held_out']} held-out pictures "
        f"({result['seconds']:.0f} s); wrote {out}"
    )
