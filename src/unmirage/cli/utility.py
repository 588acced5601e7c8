"""`unmirage utility ...`: utility benchmarks beyond the VQA file of `unmirage eval --vqa`."""

from __future__ import annotations

from pathlib import Path

import typer

from unmirage.cli.settings import out_option, settings_command
from unmirage.lmeval import LmEvalSettings

utility_app = typer.Typer(help="Utility benchmarks: lm-evaluation-harness tasks.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(utility_app, name="utility")


def lm_eval_command(settings: LmEvalSettings, *, out: Path) -> None:
    """Score a model on lm-evaluation-harness tasks (pip install 'unmirage[lmeval]')."""
    from unmirage.lmeval import run_lm_eval

    found = run_lm_eval(settings, out)
    for task, values in found.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if not k.endswith("_stderr"))
        typer.echo(f"{task}: {shown}")
    typer.echo(f"-> {out / 'lm_eval.json'}")


OUT = out_option(
    "Folder for lm_eval.json; an `unmirage eval` folder also gets utility.lm_eval in metrics.json."
)
utility_app.command("lm-eval")(settings_command(LmEvalSettings, lm_eval_command, extra=[OUT]))
