"""`unmirage report RUN_DIR [RUN_DIR ...] --out DIR`: headline tables, CSV, bar chart and report pages."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "report",
        short_help="Headline tables, CSV, bar chart and report pages across evaluation runs.",
        help="Compare evaluation runs: per run, ASR / IR / RR of each harmful case by the best judge that ran "
        "and RR of the safe cases, with 95% Wilson intervals and counts (headline.csv: the same, flat); the "
        "paper-style table; a grouped bar chart; with two or more llm-topic runs, tradeoff.png (ASR under the "
        "K-shot attack against safe questions answered on topic); with --request-labels, ASR on the requests "
        "labelled harmful; report.md and report.html.",
    )(report)


def report(
    runs: list[Path] = typer.Argument(
        ..., help="Run folders written by `unmirage eval` (each has metrics.json)."
    ),
    out: Path = typer.Option(
        ...,
        help="Folder for report.md, report.html, headline.csv, table.md, chart.png, summary.json (and "
        "tradeoff.png, chart_judges.png when they apply).",
    ),
    figure: list[Path] = typer.Option(
        [], "--figure", help="A PNG to copy next to the report and show in it (repeatable)."
    ),
    request_labels: Path | None = typer.Option(
        None,
        "--request-labels",
        help="A request-labels file (JSON lines: id, shot, harmful): adds each harmful case's ASR on the "
        "requests labelled harmful, and requests.json. data/labels/vlguard_test_requests.jsonl labels the "
        "80 VLGuard test questions of --subsample 80 and their What rewrites, read without the image.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace --out if it holds a report of other runs (the same runs rebuild it).",
    ),
) -> None:
    """Build the report for one or more evaluation runs."""
    from unmirage.report import build_report

    paths = build_report(runs, out, figures=figure, overwrite=overwrite, request_labels=request_labels)
    typer.echo(f"wrote {paths['report.md']} and {paths['report.html']} ({len(runs)} runs)")
