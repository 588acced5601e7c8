"""Run a multi-stage experiment (a plan YAML) as a sequence of `unmirage` commands, resumably.

A plan names variables, optional variants (e.g. `text` and `vlm`, each a set of variables) and stages; a
stage is one `unmirage` command line whose items are templates (`{name}` is a variable; an item that is
exactly `{name}` of a list variable is spliced in, so a variant can add flags or none). A stage with
`per_variant: true` runs once per variant; a run without `--variant` goes through the plan's
`default_variants` (all variants if it names none; `--variant all` always means all). A stage whose
`creates` path exists is skipped, so rerunning a killed plan resumes where it stopped. Each command runs as
a child process (`python -m unmirage ...`); its output goes to `OUTPUT_DIR/logs/STAGE[.VARIANT].log` and the
runner appends one line per stage to `OUTPUT_DIR/stages.jsonl` with the wall time, the child's peak resident
memory and any `*tokens_per_s*` numbers found in the manifest or metrics file next to what the stage created.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from unmirage.config import StrictModel, load_config
from unmirage.errors import UnmirageError
from unmirage.outputs import MANIFEST, RUNNING, read_owner
from unmirage.runs import JsonlAppender

VarValue = str | int | float | bool | list[str]
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
STAGES_FILE = "stages.jsonl"


class Stage(StrictModel):
    """One `unmirage` command line."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    run: list[str] = Field(min_length=1, description="unmirage argv (templates)")
    creates: str | None = Field(None, description="path that exists once the stage is done (skip if so)")
    per_variant: bool = False
    variants: list[str] | None = Field(
        None,
        description="per-variant stage: only these variants; all_variants stage: the variants whose outputs "
        "it reads (default: all)",
    )
    all_variants: bool = Field(
        False,
        description="reads the outputs of several variants (`variants`): skipped unless the run includes "
        "them all or `--only` names the stage",
    )
    env: dict[str, str] = Field(default_factory=dict)


class Plan(StrictModel):
    """A plan file: variables, variants and stages."""

    description: str = ""
    output_dir: str = Field(description="where stages.jsonl and logs/ go (a template)")
    vars: dict[str, VarValue] = Field(default_factory=dict)
    variants: dict[str, dict[str, VarValue]] = Field(default_factory=dict)
    default_variants: list[str] | None = Field(
        None, description="the variants a run without --variant goes through (default: all)"
    )
    env: dict[str, str] = Field(default_factory=dict)
    stages: list[Stage] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[Stage]) -> list[Stage]:
        names = [s.name for s in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate stage names: {', '.join(duplicates)}")
        return stages


def _render(text: str, values: dict[str, VarValue], where: str, strict: bool = True) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            if not strict:
                return match.group(0)
            raise UnmirageError(f"{where}: unknown variable '{{{name}}}'")
        item = values[name]
        if isinstance(item, list):
            raise UnmirageError(f"{where}: list variable '{{{name}}}' must stand alone as one item")
        return str(item).lower() if isinstance(item, bool) else str(item)

    return PLACEHOLDER.sub(value, text)


def resolve_vars(
    values: dict[str, VarValue], where: str = "vars", strict: bool = True
) -> dict[str, VarValue]:
    """Expand `$ENV` references and `{other}` variables until nothing changes (cycles are errors).

    With `strict=False` references to unknown names (variant variables) are left in place.
    """
    result: dict[str, VarValue] = {}
    for key, item in values.items():
        if isinstance(item, str):
            expanded = os.path.expandvars(item)
            missing = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
            if missing:
                raise UnmirageError(
                    f"{where}.{key}: environment variable {missing[0]} is not set "
                    f"(set it, or pass vars.{key}=VALUE)"
                )
            result[key] = expanded
        else:
            result[key] = item
    for _ in range(len(result) + 1):
        changed = False
        for key, item in result.items():
            if isinstance(item, str) and PLACEHOLDER.search(item):
                rendered = _render(item, result, f"{where}.{key}", strict)
                changed |= rendered != item
                result[key] = rendered
        if not changed:
            break
    for key, item in result.items():
        if isinstance(item, str) and any(name in result for name in PLACEHOLDER.findall(item)):
            raise UnmirageError(f"{where}.{key}: variables refer to each other in a cycle")
    return result


def render_argv(
    run: Iterable[str], values: dict[str, VarValue], where: str, strict: bool = True
) -> list[str]:
    """Render each item; an item that is exactly `{list_var}` is replaced by the list's items (rendered)."""
    argv: list[str] = []
    for item in run:
        match = PLACEHOLDER.fullmatch(item)
        if match and isinstance(values.get(match.group(1)), list):
            argv.extend(_render(str(v), values, where, strict) for v in values[match.group(1)])
        else:
            argv.append(_render(item, values, where, strict))
    return argv


class Step(StrictModel):
    """A stage bound to a variant, ready to run."""

    stage: str
    variant: str | None
    argv: list[str]
    creates: str | None
    env: dict[str, str]
    skip_reason: str | None = None

    @property
    def label(self) -> str:
        return self.stage if self.variant is None else f"{self.stage}.{self.variant}"


def plan_steps(
    plan: Plan, *, only: Iterable[str] = (), variants: Iterable[str] = ()
) -> tuple[list[Step], Path]:
    """The steps to run, in order: stages in file order; a run of consecutive per-variant stages goes through
    all of its stages for the first variant, then for the next, and so on.

    `variants` picks the variants (`all`: every one); without it the plan's `default_variants` run."""
    only, chosen = set(only), list(variants)
    known = {s.name for s in plan.stages}
    for name in only - known:
        raise UnmirageError(f"only: no stage named '{name}' (stages: {', '.join(sorted(known))})")
    for name in [*chosen, *(plan.default_variants or [])]:
        if name not in plan.variants and name != "all":
            raise UnmirageError(
                f"variants: no variant '{name}' (variants: {', '.join(plan.variants) or 'none'}, or all)"
            )
    chosen = chosen or list(plan.default_variants or ["all"])
    if "all" in chosen:
        chosen = list(plan.variants)
    base = resolve_vars(plan.vars, strict=False)
    output_dir = Path(_render(plan.output_dir, base, "output_dir"))
    if PLACEHOLDER.search(str(output_dir)):
        raise UnmirageError(f"output_dir '{output_dir}' may not depend on a variant's variables")
    steps = []
    for block in _blocks([s for s in plan.stages if not only or s.name in only]):
        if not block[0].per_variant:
            steps.extend(
                _bind(plan, stage, None, base, None if stage.name in only else chosen) for stage in block
            )
            continue
        for variant in [v for v in plan.variants if v in chosen]:
            values = resolve_vars(
                {**plan.vars, **plan.variants[variant], "variant": variant}, f"variants.{variant}"
            )
            steps.extend(
                _bind(plan, stage, variant, values, None)
                for stage in block
                if stage.variants is None or variant in stage.variants
            )
    return steps, output_dir


def _missing_variants(plan: Plan, stage: Stage, chosen: list[str] | None) -> str | None:
    """Why an all-variants stage cannot run with only the `chosen` variants (None: it can)."""
    if not stage.all_variants or chosen is None:
        return None
    missing = [v for v in stage.variants or plan.variants if v not in chosen]
    if not missing:
        return None
    return (
        f"reads the variants {', '.join(missing)} too: add them with --variant, "
        f"or run it alone with --only {stage.name}"
    )


def _blocks(stages: list[Stage]) -> list[list[Stage]]:
    """Consecutive stages grouped by `per_variant`, so that a variant runs its whole block before the next."""
    blocks: list[list[Stage]] = []
    for stage in stages:
        if blocks and blocks[-1][0].per_variant == stage.per_variant:
            blocks[-1].append(stage)
        else:
            blocks.append([stage])
    return blocks


def _bind(
    plan: Plan,
    stage: Stage,
    variant: str | None,
    values: dict[str, VarValue],
    chosen: list[str] | None,
) -> Step:
    """A stage with its templates rendered for one variant (or none); an all-variants stage is skipped when
    `chosen` (the run's variants; None: no restriction) lacks one it reads."""
    if stage.per_variant and not plan.variants:
        raise UnmirageError(f"stage '{stage.name}' is per_variant but the plan has no variants")
    for name in stage.variants or []:
        if name not in plan.variants:
            raise UnmirageError(f"stage '{stage.name}': unknown variant '{name}'")
    where = f"stage '{stage.name}'" + (f" ({variant})" if variant else "")
    strict = variant is not None
    step = Step(
        stage=stage.name,
        variant=variant,
        argv=render_argv(stage.run, values, where, strict),
        creates=_render(stage.creates, values, where, strict) if stage.creates else None,
        env={**plan.env, **stage.env},
        skip_reason=_missing_variants(plan, stage, chosen),
    )
    left = [m for item in [*step.argv, step.creates or ""] for m in PLACEHOLDER.findall(item)]
    if left and any(left[0] in v for v in plan.variants.values()):
        raise UnmirageError(
            f"{where}: '{{{left[0]}}}' is a variant's variable, not defined here (per_variant?)"
        )
    if left:
        raise UnmirageError(f"{where}: unknown variable '{{{left[0]}}}'")
    return step


def load_plan(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Plan:
    """Read and validate a plan file (`key.sub=value` overrides, e.g. `vars.subsample=200`)."""
    return load_config(Plan, path, overrides)


def _tokens_per_s(created: Path) -> dict[str, float]:
    """`*tokens_per_s*` numbers at the top level of the manifest/metrics JSON next to a created path."""
    folder = created if created.is_dir() else created.parent
    found: dict[str, float] = {}
    for name in ("manifest.json", "metrics.json"):
        path = folder / name
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            found.update(
                {k: float(v) for k, v in data.items() if "tokens_per_s" in k and isinstance(v, (int, float))}
            )
    return found


def run_child(argv: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float]:
    """Run `python -m unmirage ARGV`; returns (exit code, wall seconds, the child's peak RSS in GB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    import unmirage

    # the child imports the same unmirage as this process, installed or not
    source = str(Path(unmirage.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ unmirage " + " ".join(argv) + "\n")
        handle.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "unmirage", *argv],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": path, **env},
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 2**20


def _created(path: Path) -> bool:
    """Whether a stage's `creates` path marks it done: it exists, and is not the claim of a run still going.

    Every writing command claims its folder with a manifest whose status is "running" until it finishes, so a
    stage killed part-way (whose `creates` is that manifest) runs again and resumes instead of being skipped.
    """
    if not path.exists():
        return False
    owner = read_owner(path) if path.name == MANIFEST else None
    return owner is None or owner.get("status") != RUNNING


def run_plan(
    plan: Plan,
    *,
    only: Iterable[str] = (),
    variants: Iterable[str] = (),
    dry_run: bool = False,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or with `dry_run` print) the plan's steps; returns one record per step run or skipped."""
    steps, output_dir = plan_steps(plan, only=only, variants=variants)
    records: list[dict[str, Any]] = []
    for number, step in enumerate(steps, 1):
        head = f"[{number}/{len(steps)}] {step.label}"
        if step.skip_reason:
            echo(f"{head}: skipped ({step.skip_reason})")
            records.append({"stage": step.stage, "variant": step.variant, "status": "skipped"})
            continue
        if step.creates and _created(Path(step.creates)) and not force:
            echo(f"{head}: done ({step.creates} exists)")
            records.append({"stage": step.stage, "variant": step.variant, "status": "skipped"})
            continue
        if dry_run:
            echo(f"{head}: unmirage {shlex.join(step.argv)}")
            records.append(
                {"stage": step.stage, "variant": step.variant, "status": "planned", "argv": step.argv}
            )
            continue
        echo(f"{head}: running (log: {output_dir / 'logs' / (step.label + '.log')})")
        log = output_dir / "logs" / f"{step.label}.log"
        code, wall, peak = run_child(step.argv, step.env, log)
        record = {
            "stage": step.stage,
            "variant": step.variant,
            "status": "ok" if code == 0 else "failed",
            "exit_code": code,
            "wall_s": round(wall, 2),
            "peak_rss_gb": round(peak, 3),
            "argv": step.argv,
        }
        if code == 0 and step.creates and _created(Path(step.creates)):
            record.update(_tokens_per_s(Path(step.creates)))
        with JsonlAppender(output_dir / STAGES_FILE) as appender:
            appender.write_many([record])
        records.append(record)
        if code != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            raise UnmirageError(
                f"stage {step.label} failed with exit code {code} after {wall:.0f} s "
                f"({tail[0] if tail else 'no output'}); full log: {log}"
            )
        if step.creates and not _created(Path(step.creates)):
            raise UnmirageError(f"stage {step.label} ended but did not create {step.creates}; log: {log}")
        echo(f"{head}: ok in {wall:.0f} s, peak {peak:.2f} GB")
    return records
