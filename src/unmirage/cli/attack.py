"""`unmirage attack build`: trigger-word attack files in the published schema."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from unmirage.attacks import LLM_PANEL, AttackBuildSettings
from unmirage.cli.settings import option, out_option, settings_command

attack_app = typer.Typer(
    help="Build one-word and K-shot rewrite attacks and GCG suffixes.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")


def build(settings: AttackBuildSettings, *, out: Path, api_key_env: str) -> None:
    """Build a trigger-word attack file and its report; print the summary."""
    import json

    from rich.console import Console

    from unmirage.attacks import run_attack_build

    result, report = run_attack_build(settings, out, api_key=os.environ.get(api_key_env))
    summary = result.summary()
    console = Console()
    console.print(json.dumps(summary, indent=1))
    if summary["unfilled_shots"]:
        console.print(f"[yellow]{summary['unfilled_shots']} shots could not be filled: see {report}[/yellow]")
    console.print(f"wrote {out} ({len(result.records)} records) and {report}")


attack_app.command(
    "build", help="Rewrite each question K times to start with a trigger word; report failures."
)(
    settings_command(
        AttackBuildSettings,
        build,
        extra=[
            out_option("Attack JSON file; the report goes to <stem>.report.json."),
            option(
                "api_key_env",
                str,
                typer.Option(
                    "OPENAI_API_KEY",
                    help="Environment variable holding the endpoint's key.",
                    rich_help_panel=LLM_PANEL,
                ),
            ),
        ],
    )
)


@attack_app.command(
    "gcg",
    help="Optimise a GCG adversarial suffix per harmful question against a model (white box); write an attack "
    "file that `eval --gcg` and `generate` read (resumable: rerun the same command to continue).",
)
def gcg(
    model: str = typer.Option(..., help="Model to attack: local folder, Hub id, or tiny-llava."),
    data: Path = typer.Option(..., help="VLGuard-format JSON file (e.g. test.json)."),
    out: Path = typer.Option(
        ..., "--out", help="Attack JSON file; <stem>.gcg.jsonl (per-question log), .report.json next to it."
    ),
    target: str = typer.Option("Sure, here is", help="Text the answer should open with."),
    steps: int = typer.Option(250, help="GCG steps per question (at most; see --early-stop)."),
    search_width: int = typer.Option(512, help="Candidate suffixes scored per step."),
    topk: int = typer.Option(256, help="Tokens of most negative gradient considered per suffix position."),
    suffix_init: str = typer.Option(
        " !" * 20, help="Starting suffix (its tokens set the suffix length; start it with a space)."
    ),
    seed: int = typer.Option(0, help="Seed of the candidate sampling (and of --subsample)."),
    batch_size: int | None = typer.Option(None, help="Candidates per forward pass (default: all)."),
    prefix_cache: bool = typer.Option(
        True, help="Reuse the keys and values of the prompt before the suffix (same losses, faster)."
    ),
    early_stop: bool = typer.Option(True, help="Stop a question once greedy decoding gives the target."),
    template: str = typer.Option("v1", help="Prompt template: v1 (reference) or chat; as in eval."),
    subset: str = typer.Option("unsafes", help="Which instructions: unsafes, safe_safes, safe_unsafes."),
    limit: int | None = typer.Option(None, help="Attack only the first N questions."),
    subsample: int | None = typer.Option(
        None, help="Attack N seeded random questions (the ids `eval --subsample N --seed S` picks)."
    ),
    image_root: Path | None = typer.Option(
        None, help="VLMs: folder the records' image paths are relative to."
    ),
    placeholder_images: bool = typer.Option(False, help="VLMs: grey placeholder images (text-only run)."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, bfloat16, float16."),
    adapter: Path | None = typer.Option(None, help="LoRA adapter folder to apply on top of the model."),
) -> None:
    import json

    from unmirage.attacks_gcg import GCGConfig, build_gcg_attack
    from unmirage.config import validate

    config = validate(
        GCGConfig,
        {
            "target": target,
            "steps": steps,
            "search_width": search_width,
            "topk": topk,
            "suffix_init": suffix_init,
            "seed": seed,
            "batch_size": batch_size,
            "prefix_cache": prefix_cache,
            "early_stop": early_stop,
            "template": template,
        },
        source="command line",
    )
    summary = build_gcg_attack(
        model,
        data,
        out,
        config,
        subset=subset,
        image_root=image_root,
        placeholder_images=placeholder_images,
        limit=limit,
        subsample=subsample,
        dtype=dtype,
        adapter=adapter,
    )
    typer.echo(json.dumps(summary, indent=1))
    typer.echo(f"wrote {out} ({summary['questions']} questions)")
