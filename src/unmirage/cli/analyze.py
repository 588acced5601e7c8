"""`unmirage analyze`: spurious words of a data set, and trigger words of a model."""

from __future__ import annotations

from pathlib import Path

import typer

from unmirage.analysis.spurious import SpuriousSettings
from unmirage.cli.settings import out_option, overwrite_option, settings_command

analyze_app = typer.Typer(
    help="Diagnose the safety mirage: spurious words in data, trigger words in a model.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")


def spurious(settings: SpuriousSettings, *, out: Path, overwrite: bool) -> None:
    """Rank the words of a data set or of benchmarks' prompts; print the strongest each way."""
    from rich.console import Console

    from unmirage.analysis.spurious import run_spurious

    result, table, chart = run_spurious(settings, out, overwrite=overwrite)
    console = Console()
    a, b = result.labels
    for direction, name in (("positive", a), ("negative", b)):
        words = ", ".join(
            f"{t['token']} ({t['counts'][a]}/{t['counts'][b]}, z={t['z']:.1f})"
            for t in result.top(5, direction)
        )
        console.print(f"[bold]{name}[/bold]: {words}")
    console.print(f"wrote {table} and {chart}")


analyze_app.command(
    "spurious",
    help="Rank the words that separate unsafe from safe (or refusal from compliant), in a data file or in "
    "the prompts of registered benchmarks (--benchmark).",
)(
    settings_command(
        SpuriousSettings,
        spurious,
        extra=[
            out_option("Output folder (spurious.json, spurious.png, manifest.json)."),
            overwrite_option("Replace --out if it holds another analysis."),
        ],
    )
)


@analyze_app.command(
    "triggers", help="Find the first words that flip a model's refusals (rewrite, answer, judge)."
)
def triggers(
    model: str = typer.Option(..., help="Model: tiny-llava, a local folder or a Hub id."),
    data: Path = typer.Option(..., help="VLGuard-format JSON file with the queries."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (triggers.json, triggers.png, generations.jsonl)."
    ),
    image_root: Path = typer.Option(None, help="Folder the records' image paths are relative to."),
    candidates: Path = typer.Option(None, help="A spurious.json: take its --top words each way."),
    top: int = typer.Option(10, help="Words taken each way from --candidates; bars in the chart."),
    words: list[str] = typer.Option(None, help="Candidate words (repeatable or comma-separated)."),
    subset: list[str] = typer.Option(
        None, help="Query subsets: unsafes, safe_safes, safe_unsafes (default unsafes and safe_safes)."
    ),
    limit: int = typer.Option(
        None, "--subsample", help="N random queries per subset (seeded by --seed); default: every query."
    ),
    seed: int = typer.Option(0, help="Seed of the --subsample draw."),
    judge: str = typer.Option(
        "keyword", help="Refusal judge: keyword (reference list), keyword-strict or refusal (classifier)."
    ),
    max_new_tokens: int = typer.Option(64, help="Answer length (a refusal shows in the first tokens)."),
    batch_size: int = typer.Option(16, help="Generation batch size."),
    template: str = typer.Option("v1", help="Prompt template: v1 (reference) or chat."),
    placeholder_images: bool = typer.Option(
        False, help="Use a grey image where a record's image is missing."
    ),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, bfloat16, float16."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out if it holds another run (a rerun otherwise resumes it)."
    ),
) -> None:
    import json

    from rich.console import Console

    from unmirage.analysis.triggers import (
        candidate_words,
        discover_triggers,
        model_answerer,
        plot_rankings,
        queries_from_vlguard,
        refusal_judge,
    )
    from unmirage.data.images import ImageLoader
    from unmirage.data.vlguard import load_vlguard
    from unmirage.errors import UnmirageError
    from unmirage.generate import GenerationConfig, make_answerer
    from unmirage.outputs import claim_folder, file_identity, folder_path, model_identity
    from unmirage.runs import atomic_write_json, write_manifest

    chosen = [w for item in (words or []) for w in item.split(",") if w.strip()]
    if candidates is not None:
        if not candidates.is_file():
            raise UnmirageError("file not found", file=candidates)
        chosen += candidate_words(json.loads(candidates.read_text(encoding="utf-8")), top)
    if not chosen:
        raise UnmirageError("give candidate words with --words or --candidates")
    is_refusal = refusal_judge(judge)
    queries = queries_from_vlguard(
        load_vlguard(data, kind="plain"),
        subset or ("unsafes", "safe_safes"),
        with_images=image_root is not None,
        limit=limit,
        seed=seed,
    )
    ImageLoader(root=image_root).verify([(q.id, q.image) for q in queries if q.image is not None])
    identity = {"model": model_identity(model), "dtype": dtype, "data": file_identity(data)}
    identity |= {"image_root": folder_path(image_root), "placeholder_images": placeholder_images}
    identity |= {"template": template, "max_new_tokens": max_new_tokens}
    claim_folder(out, command="analyze triggers", identity=identity, overwrite=overwrite, inputs=[data])
    config = GenerationConfig(
        template=template,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        placeholder_images=placeholder_images,
    )
    generator = make_answerer(model, config, image_root=image_root, dtype=dtype)
    answer = model_answerer(generator, out / "generations.jsonl")
    result = discover_triggers(queries, chosen, answer, is_refusal)
    result["settings"] = {
        "model": model,
        "judge": judge,
        "template": template,
        "max_new_tokens": max_new_tokens,
    }
    table, chart = out / "triggers.json", out / "triggers.png"
    atomic_write_json(table, result)
    plot_rankings(result, chart, top=max(top, 10))
    write_manifest(
        out,
        command="analyze triggers",
        identity=identity,
        config=result["settings"] | {"words": chosen, "limit": limit},
        inputs=[data],
        outputs=[table, chart],
        seed=seed,
    )
    console = Console()
    for direction, info in result["directions"].items():
        best = ", ".join(f"{w['word']} ({w['flip_rate']:.0%})" for w in info["words"][:5])
        console.print(
            f"[bold]{direction}[/bold] (refusal rate as written {info['refusal_rate_original']:.0%}): {best}"
        )
    console.print(f"wrote {table} and {chart}")
