"""`unmirage benchmark list|show`: the registered benchmarks and what each case measures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from unmirage.benchmarks import CaseSpec

benchmark_app = typer.Typer(
    help="Safety benchmarks as data: list them and show their cases.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(benchmark_app, name="benchmark")


RATE = {"refusal": "RR", "attack": "ASR"}


@benchmark_app.command("list", help="The registered benchmarks, their cases and licences.")
def list_benchmarks() -> None:
    from unmirage.benchmarks import available_benchmarks, get_benchmark

    for name in available_benchmarks():
        spec = get_benchmark(name)
        cases = ", ".join(f"{c} ({RATE[cs.kind]})" for c, cs in spec.cases.items())
        typer.echo(f"{name:<10} {spec.licence:<16} {cases}")


def _rewrites(cs: CaseSpec) -> bool:
    return cs.transform is not None and cs.transform.type == "rewrite"


def _transform(cs: CaseSpec) -> str:
    t = cs.transform
    if t is None:
        return "-"
    if t.type == "rewrite":
        return f"rewrite {t.word} x{t.k}"
    if t.type == "prefill":
        return f"prefill {t.text!r}"
    return f"typography of '{t.field}'"


@benchmark_app.command(
    "show", help="One benchmark's cases; with a data root, prompts and skipped rewrites per case."
)
def show(
    name: str = typer.Argument(
        ..., help="A registered benchmark (see `unmirage benchmark list`) or a spec .yaml."
    ),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Folder with one sub-folder per benchmark (default: $UNMIRAGE_DATA_DIR)."
    ),
) -> None:
    from unmirage.benchmarks import data_root as resolve_root
    from unmirage.benchmarks import load_case, resolve_benchmark

    root = resolve_root(data_root)
    spec = resolve_benchmark(name, root)
    typer.echo(f"{spec.name}: {' '.join(spec.description.split())}")
    typer.echo(f"licence: {spec.licence}   loader: {spec.loader}   spec: {spec.source}")
    typer.echo("data: " + ", ".join(f"{k}={v}" for k, v in spec.data.items()))
    if root is not None:
        typer.echo(f"data folder: {spec.folder(root)}")
    for case, cs in spec.cases.items():
        records = ", ".join(f"{k}={v}" for k, v in cs.records.items()) or "all"
        typer.echo(f"\n{case}  [{cs.kind}, {RATE[cs.kind]}]  {cs.label}")
        typer.echo(f"  records: {records}   transform: {_transform(cs)}   judges: {', '.join(cs.judges)}")
        if cs.pairs_with:
            typer.echo(f"  pairs with: {cs.pairs_with}")
        if cs.by_category:
            typer.echo("  reported per category too")
        if root is not None:
            data = load_case(spec, case, root, render=False)
            skipped = f"   skipped rewrites: {len(data.skipped)}" if _rewrites(cs) else ""
            typer.echo(f"  prompts: {len(data.prompts)} ({len(data.ids)} questions){skipped}")
            if data.short:
                typer.echo(f"  questions with fewer than K rewrites: {data.short}")
            for skip in data.skipped[:3]:
                typer.echo(f"    skipped {skip['id']}: {skip['reason']}")
            categories = Counter(p.category for p in data.prompts if p.shot == 0)
            if 1 < len(categories) <= 12:
                typer.echo(
                    "  by category: " + ", ".join(f"{c}={n}" for c, n in sorted(categories.items(), key=str))
                )
