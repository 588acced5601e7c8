"""`unmirage pipeline run PLAN.yaml`: run a multi-stage experiment plan (e.g. recipes/smol-vlguard)."""

from __future__ import annotations

from pathlib import Path

import typer

pipeline_app = typer.Typer(
    help="Run experiment plans: a sequence of unmirage commands, resumable, timed.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("run")
def run(
    plan: Path = typer.Argument(
        ..., help="Plan YAML (see recipes/smol-vlguard/pipeline.yaml, docs/smol.md)."
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="Plan overrides: key.sub=value, e.g. vars.subsample=200."
    ),
    only: list[str] | None = typer.Option(None, help="Run only this stage (repeatable)."),
    variant: list[str] | None = typer.Option(
        None,
        help="Run per-variant stages only for this variant (repeatable; 'all': every variant). "
        "Default: the plan's default_variants, or every variant.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command lines; run nothing."),
    force: bool = typer.Option(False, "--force", help="Run stages even when their output exists."),
) -> None:
    """Run each stage of a plan as an unmirage command, skipping stages whose output exists."""
    from unmirage.pipeline import load_plan, run_plan

    records = run_plan(
        load_plan(plan, overrides or []),
        only=only or (),
        variants=variant or (),
        dry_run=dry_run,
        force=force,
        echo=typer.echo,
    )
    ran = [r for r in records if r["status"] == "ok"]
    if ran:
        typer.echo(f"{len(ran)} stage(s) ran in {sum(r['wall_s'] for r in ran):.0f} s")
