"""`unmirage report RUN_DIR [RUN_DIR ...] --out DIR`: the paper-style table, a bar chart and reports."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "report",
        short_help="Table, bar chart and report pages across evaluation runs.",
        help="Compare evaluation runs: paper-style table (ASR normal -> attack, RR normal -> Share, utility), "
        "grouped bar chart with 95% intervals, report.md and report.html.",
    )(report)


def report(
    runs: list[Path] = typer.Argument(
        ..., help="Run folders written by `unmirage eval` (each has metrics.json)."
    ),
    out: Path = typer.Option(
        ..., help="Folder for table.md, chart.png, report.md, report.html, summary.json."
    ),
) -> None:
    """Build the report for one or more evaluation runs."""
    from unmirage.report import build_report

    paths = build_report(runs, out)
    typer.echo(f"wrote {paths['report.md']} and {paths['report.html']} ({len(runs)} runs)")
