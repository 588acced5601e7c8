"""`unmirage analyze probe`: linear probes per layer and question form (added to the `analyze` group)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    from unmirage.cli.analyze import analyze_app

    analyze_app.command(
        "probe", help="Linear probe per layer: forget vs retain questions, scored per question form."
    )(probe)


def probe(
    model: str = typer.Option(..., help="Model: a local folder, a Hub id or tiny-llava."),
    forget: Path = typer.Option(
        ..., help="Forget set (conversation file, e.g. build-unlearn's forget.json)."
    ),
    retain: Path = typer.Option(..., help="Retain set (conversation file, e.g. retain.json)."),
    data: Path = typer.Option(
        ..., help="VLGuard-schema file whose questions are scored per form (test.json)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (probe.json, probe.png, manifest.json)."),
    layers: list[str] = typer.Option(
        None, help="Decoder layers, 0-based (repeatable; 7, 5-9, 0,7,29, -1); default every layer."
    ),
    pool: str = typer.Option(
        "last", help="Question representation: last (prompt token) or mean (of the prompt)."
    ),
    what: Path = typer.Option(
        None,
        help="What attack file (K-shot, e.g. test_what_3shot.json): its rewrites are the unsafe_attack form.",
    ),
    share: Path = typer.Option(
        None, help="Share attack file (e.g. test_share_1shot.json): its rewrites are the safe_attack form."
    ),
    request_labels: Path = typer.Option(
        None,
        "--request-labels",
        help="Request labels (JSON lines: id, shot, harmful; docs/metrics.md): the unsafe forms hold only the "
        "requests labelled harmful (as asked, their rule rewrites, the attack file's harmful rewrites).",
    ),
    harmful_word: str = typer.Option("What", help="Rewrite the unsafe questions to start with this word."),
    safe_word: str = typer.Option("Share", help="Rewrite the safe questions to start with this word."),
    rewrite_word: list[str] = typer.Option(
        None,
        help="Form-blind probe: add the training questions' rewrites to these words (default What, Share).",
    ),
    subsample: int = typer.Option(
        None, "--subsample", help="N random questions per subset of --data (seeded); default every question."
    ),
    train_subsample: int = typer.Option(
        None, help="N random examples from each of --forget and --retain (seeded); default all."
    ),
    l2: float = typer.Option(1e-2, help="L2 penalty of the logistic regression (standardised features)."),
    template: str = typer.Option("chat", help="Prompt template: chat or v1."),
    image_root: Path = typer.Option(None, help="Folder the records' image paths are relative to (VLMs)."),
    placeholder_images: bool = typer.Option(False, help="A grey image for every question (VLMs, no images)."),
    batch_size: int = typer.Option(16, help="Prompts per forward pass."),
    dtype: str = typer.Option("float32", help="Model dtype: auto, float32, bfloat16, float16."),
    seed: int = typer.Option(0, help="Seed of the subsampling draws."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it holds another analysis."),
) -> None:
    from rich.console import Console
    from tqdm.auto import tqdm

    from unmirage.analysis.probe import (
        POOLS,
        FeatureCache,
        ProbeInputs,
        evaluation_forms,
        layer_features,
        parse_layers,
        plot_probe,
        probe_layers,
    )
    from unmirage.analysis.probe import (
        subsample as draw,
    )
    from unmirage.data.collate import Collator
    from unmirage.data.conversations import load_examples
    from unmirage.data.images import ImageLoader
    from unmirage.data.requests import read_request_labels
    from unmirage.errors import UnmirageError
    from unmirage.models import load_model, resolve_device
    from unmirage.outputs import claim_folder, file_identity, folder_path, model_identity
    from unmirage.runs import atomic_write_json, write_manifest

    files = [p for p in (forget, retain, data, what, share, request_labels) if p is not None]
    for name, path in (
        ("--forget", forget),
        ("--retain", retain),
        ("--data", data),
        ("--what", what),
        ("--share", share),
        ("--request-labels", request_labels),
    ):
        if path is not None and not path.is_file():
            raise UnmirageError(f"{name}: file not found", file=path)
    if batch_size < 1:
        raise UnmirageError(f"--batch-size must be >= 1, got {batch_size}")
    if pool not in POOLS:
        raise UnmirageError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if l2 < 0:
        raise UnmirageError(f"--l2 must be >= 0, got {l2}")
    words = tuple(rewrite_word or ("What", "Share"))
    inputs = ProbeInputs(
        forget=draw(load_examples(forget, multi_turn="first"), train_subsample, seed),
        retain=draw(load_examples(retain, multi_turn="first"), train_subsample, seed),
        forms=evaluation_forms(
            data,
            harmful_word=harmful_word,
            safe_word=safe_word,
            limit=subsample,
            seed=seed,
            what=what,
            share=share,
            requests=read_request_labels(request_labels) if request_labels is not None else None,
        ),
        rewrite_words=words,
        seed=seed,
    )
    settings = {
        "model": model,
        "pool": pool,
        "template": template,
        "l2": l2,
        "harmful_word": harmful_word,
        "safe_word": safe_word,
        "rewrite_words": list(words),
        "subsample": subsample,
        "request_labels": str(request_labels) if request_labels is not None else None,
        "train_subsample": train_subsample,
        "placeholder_images": placeholder_images,
        "dtype": dtype,
        "seed": seed,
    }
    identity = {"model": model_identity(model), "image_root": folder_path(image_root), "layers": layers}
    identity |= {"files": [file_identity(p) for p in files], "settings": settings}
    claim_folder(out, command="analyze probe", identity=identity, overwrite=overwrite, inputs=files)
    loaded = load_model(model, dtype=dtype, device_map=resolve_device())
    chosen = parse_layers(layers, loaded.family.num_layers(loaded.model))
    images = ImageLoader(root=image_root) if image_root is not None else ImageLoader()
    collator = Collator(loaded, template=template, image_loader=images, placeholder_images=placeholder_images)

    def compute(examples: list, what: str):  # noqa: ANN202 (a FeatureCache callback)
        with tqdm(total=len(examples), desc=f"probe: {what}", unit="q", dynamic_ncols=True) as bar:
            return layer_features(
                loaded,
                examples,
                chosen,
                collator.encode_prompts,
                pool=pool,
                batch_size=batch_size,
                progress=bar.update,
            )

    result = probe_layers(inputs, FeatureCache(compute), chosen, l2=l2)
    result = {"settings": settings | {"layers": chosen, "representation": _REPRESENTATION[pool]}, **result}
    table, chart = out / "probe.json", out / "probe.png"
    atomic_write_json(table, result)
    plot_probe(result, chart)
    write_manifest(
        out,
        command="analyze probe",
        identity=identity,
        config=result["settings"],
        inputs=files,
        outputs=[table, chart],
        seed=seed,
    )
    console = Console()
    for name, per_layer in result["probes"].items():
        console.print(f"[bold]{name}[/bold] probe, accuracy per form:")
        for layer, row in per_layer.items():
            cells = ", ".join(
                f"{form} {scores['accuracy']:.0%} (P={scores['mean_p_forget']:.2f})"
                for form, scores in row["forms"].items()
                if scores["n"]
            )
            console.print(f"  layer {layer}: {cells}")
    console.print(f"wrote {table} and {chart}")


_REPRESENTATION = {
    "last": "output of the decoder layer (before the final norm) at the last prompt token",
    "mean": "output of the decoder layer (before the final norm), mean over the attended prompt tokens",
}
