"""`unmirage eval`: the protocol cases, any registered benchmark's cases and optional VQA utility through
generation, judges and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from unmirage.cli.settings import option, out_option, overwrite_option, settings_command

if TYPE_CHECKING:
    from unmirage.eval import EvalSettings


def register(app: typer.Typer) -> None:
    from unmirage.eval import EvalSettings

    app.command(
        "eval",
        short_help="Run the safety-mirage protocol on a model: RR, ASR, utility.",
        help="Run the safety-mirage protocol on a model: RR on safe questions (normal, Share rewrite), ASR on "
        "harmful ones (normal, K-shot What rewrite), optional VQA utility; any registered safety benchmark "
        "with --benchmark NAME (one model load for all); writes OUT/metrics.json. Settings come from the "
        "options, or from --config FILE.yaml (the options given win) and KEY=VALUE overrides (which win over "
        "both).",
    )(settings_command(EvalSettings, eval_command, extra=OWN_OPTIONS, prepare=_api_key))


OWN_OPTIONS = [
    out_option("Output folder (metrics.json, generations/, judged/, manifest.json)."),
    overwrite_option("Replace OUT if it holds a run (a rerun otherwise resumes the same run only)."),
    option(
        "judge_api_key_env",
        str,
        typer.Option(
            "UNMIRAGE_JUDGE_API_KEY",
            help="Env variable with the judge API key (read with --judge-url).",
            rich_help_panel="Judges",
        ),
    ),
]
"""`unmirage eval`'s options that are not settings: where the run goes, and where the judge's key is."""


def _api_key(data: dict[str, Any], own: dict[str, Any]) -> None:
    """The judge's API key comes from the environment variable named by --judge-api-key-env, never a flag."""
    from unmirage.llm import read_api_key

    env = own.pop("judge_api_key_env")
    if data.get("judge_url") and "judge_api_key" not in data:
        data["judge_api_key"] = read_api_key(env)


def eval_command(settings: EvalSettings, *, out: Path, overwrite: bool) -> None:
    """Evaluate a model on the protocol cases and any benchmarks given; write OUT/metrics.json."""
    from unmirage.eval import run_eval
    from unmirage.metrics import HEADLINE_KEYS

    metrics = run_eval(settings, out, overwrite=overwrite)
    parts = []
    not_refused = not metrics["headline"]["tells_irrelevant"]
    for key in HEADLINE_KEYS:
        if metrics.get(key) is not None:
            low, high = metrics[f"{key}_ci"]
            name = f"{key} (not refused)" if not_refused and key.startswith("asr_") else key
            parts.append(f"{name} {100 * metrics[key]:.2f}% [{100 * low:.2f}, {100 * high:.2f}]")
    for name, cases in (metrics.get("benchmarks") or {}).items():
        for case_name, entry in cases.items():
            parts.append(_benchmark_line(name, case_name, entry))
    utility = (metrics.get("utility") or {}).get("vqa")
    if utility:
        parts.append(f"vqa {100 * utility['accuracy']['value']:.2f}%")
    typer.echo("; ".join(parts) + f" -> {out / 'metrics.json'}")


def _benchmark_line(name: str, case: str, entry: dict) -> str:
    """`xstest.safe RR 12.00% [8.51, 16.64] (30/250, keyword)` for one benchmark case."""
    measure = "RR" if entry["measure"] == "rr" else "ASR" if entry["tells_irrelevant"] else "not refused"
    if entry["rate"] is None:
        return f"{name}.{case} {measure} n/a (0 prompts, {entry['skipped']} skipped)"
    low, high = entry["ci"]
    skipped = f", {entry['skipped']} skipped" if entry["skipped"] else ""
    return (
        f"{name}.{case} {measure} {100 * entry['rate']:.2f}% [{100 * low:.2f}, {100 * high:.2f}] "
        f"({entry['k']}/{entry['n']}, {entry['judge']}{skipped})"
    )
