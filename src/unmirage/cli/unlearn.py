"""`unmirage unlearn RECIPE.yaml [key=value ...]`: train an unlearning (or SFT) recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from unmirage.errors import UnmirageError


def register(app: typer.Typer) -> None:
    app.command(
        "unlearn",
        help="Unlearn with a recipe (NPO, RMU, SimNPO, gradient ascent/difference) or run the SFT baseline; "
        "overrides like method.beta=0.9 train.learning_rate=1e-5 follow the recipe. Works under "
        "`accelerate launch -m unmirage unlearn ...` (DDP, DeepSpeed ZeRO-2/3).",
    )(unlearn)


def unlearn(
    recipe: Path = typer.Argument(..., help="YAML recipe (see recipes/ and docs/unlearning.md)."),
    overrides: list[str] | None = typer.Argument(None, help="Recipe overrides: key.sub=value ..."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint-* in output_dir."),
    auto_resume: bool = typer.Option(
        False,
        "--auto-resume",
        help="Continue from the last checkpoint-* in output_dir if there is one, else start (for pipelines).",
    ),
    merge: bool = typer.Option(
        False, "--merge", help="LoRA: also write merged weights to output_dir/merged."
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Validate the recipe, its files and this machine's support for it; train nothing.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace output_dir if it holds a run (of unmirage; other folders never)."
    ),
) -> None:
    import json

    from unmirage.config import dump_config
    from unmirage.train.recipe import load_recipe, preflight

    if resume and auto_resume:
        raise UnmirageError("give --resume or --auto-resume, not both")
    parsed, config = load_recipe(recipe, overrides or [])
    if check:
        from unmirage.train.run import claim_run

        preflight(parsed, config, recipe)
        resume_mode = "auto" if auto_resume else resume
        claim_run(
            parsed,
            config,
            Path(parsed.output_dir),
            resume=resume_mode,
            overwrite=overwrite,
            recipe_path=recipe,
            check=True,
        )
        typer.echo(json.dumps({"recipe": dump_config(parsed), "method": config.to_dict()}, indent=2))
        return
    from unmirage.train.run import run_unlearning, set_threads_from_env

    set_threads_from_env()
    result = run_unlearning(
        parsed,
        config,
        recipe_path=recipe,
        resume="auto" if auto_resume else resume,
        merge=merge or None,
        overrides=tuple(overrides or ()),
        overwrite=overwrite,
    )
    if not result.trainer.is_world_process_zero():
        return
    last = result.metrics[-1] if result.metrics else {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("step", "epoch"))
    typer.echo(f"{config.name}: {result.global_step} steps -> {result.output_dir} ({summary})")
