"""`unmirage lab run`: MirageLab, the safety mirage reproduced end to end on a CPU (the default demo)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="MirageLab: the safety mirage in a synthetic world, end to end on a CPU in minutes.",
        no_args_is_help=True,
    )
    group.command(
        "run",
        help="Build the world, train the base model, safety-SFT it (Mixed, Posthoc), unlearn it (NPO, RMU), "
        "evaluate everything with `unmirage eval` and write the report.",
    )(run)
    app.add_typer(group, name="lab")


def run(
    out: Path = typer.Option(Path("lab-out"), "--out", help="Output folder."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Number of seeds (0..N-1); the table gives medians."),
    first_seed: int = typer.Option(0, "--first-seed", help="Seed of the first run."),
    quick: bool = typer.Option(
        False, "--quick", help="Smaller world and fewer steps (about 60% of the time)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML with LabConfig keys (over the defaults)."
    ),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. rmu.layer=2."),
    resume: bool = typer.Option(
        False, "--resume", help="Skip the stages whose outputs are already in --out."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or stage lines."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        help="Processes side by side: data-parallel base training, then the four trainings and the "
        "evaluations at once (default: one per core, at most 4; 1: all in this process). A seed's numbers "
        "are reproducible for a given number.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out if it holds a lab run with other settings or seeds."
    ),
) -> None:
    import time

    from unmirage.lab.config import load_lab_config
    from unmirage.lab.narrative import table_markdown
    from unmirage.lab.run import run_lab

    start = time.perf_counter()
    lab_config = load_lab_config(quick=quick, path=config, overrides=overrides or [])
    result = run_lab(
        lab_config,
        out,
        seeds=list(range(first_seed, first_seed + seeds)),
        progress=not quiet,
        resume=resume,
        overwrite=overwrite,
        workers=workers,
    )
    print(table_markdown(result["models"]))
    print(f"MirageLab: {time.perf_counter() - start:.0f} s wall; report: {out / 'miragelab.md'}")
    print('Next: the same steps on your own model: README.md, section "Your own model".')
