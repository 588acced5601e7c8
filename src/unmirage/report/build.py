"""`unmirage report RUN_DIR ... --out DIR`: read each run's metrics.json, write tables, CSV, charts and pages.

The headline of every run is its metrics.json `headline` block: per harmful case the split of the best judge
that ran (ASR / IR / RR / errors; only "not refused" when no judge that tells irrelevant answers ran), per
safe case the refusal judge's RR, each with its Wilson interval and n. Runs that measured benchmarks
(`benchmarks.<name>.<case>`) also get one table and chart per benchmark and a cross-benchmark summary.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unmirage.data.requests import read_request_labels
from unmirage.errors import UnmirageError
from unmirage.metrics import (
    HEADLINE_KEYS,
)
from unmirage.report.chart import TRADEOFF_TITLE, bar_chart, tradeoff_chart, tradeoff_runs
from unmirage.report.requests import (
    REQUESTS_FILE,
    REQUESTS_TEXT,
    REQUESTS_TITLE,
    requests_document,
    requests_rows,
    run_on_harmful,
)
from unmirage.report.summary import ATTACK_CASES, SAFE_CASES, RunSummary, load_run, rate_cell

# Case -> how the report names it.
CASE_NAMES = {
    "unsafe_normal": "harmful, as asked",
    "unsafe_attack": 'harmful, K-shot "What" rewrites',
    "unsafe_prefill": "harmful, forced compliant opening (prefill)",
    "unsafe_gcg": "harmful, GCG adversarial suffix",
    "safe_normal": "safe, as asked",
    "safe_share": 'safe, rewritten to start with "Share"',
}
TRADEOFF_FILE = "tradeoff.png"
TRADEOFF_TEXT = (
    "One point per run: across, the safe questions it answers on topic; up, the harmful questions it answers on "
    "topic under the K-shot attack. A model that unlearned the harm and kept its answers sits in the lower "
    "right corner; a low ASR on the left of the chart came with safe answers lost (look at its IR)."
)
NOT_REFUSED_NOTE = (
    'No judge that can tell irrelevant answers ran ({judge}): "not refused" counts every answer without a '
    "refusal phrase, word salad included, so it is not an attack success rate; add `--judge llm-topic`, "
    "`llm-relevance` or `llm-harm` to `unmirage eval` for ASR and IR."
)


def _unique_labels(runs: list[RunSummary]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.label} ({run.path.name})"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _arrow(run: RunSummary, a: str, b: str) -> str:
    return f"{_pct(run.value(a))} → {_pct(run.value(b))}"


def _optional_cases(runs: Sequence[RunSummary]) -> list[tuple[str, str]]:
    """(case, short name) of the optional attacks (prefill, GCG) that at least one run measured."""
    return [
        (case, name)
        for case, name in (("unsafe_prefill", "prefill"), ("unsafe_gcg", "GCG"))
        if any(run.split(case) is not None for run in runs)
    ]


def _judges_text(run: RunSummary) -> str:
    head = run.headline()
    method = head.get("asr_method")
    kind = "" if run.tells_irrelevant() else ", cannot tell irrelevant answers"
    return f"harmful questions: {method}{kind}; safe questions (refusal): {head.get('refusal_judge')}"


def headline_rows(run: RunSummary, cases: Sequence[str] = (*ATTACK_CASES, *SAFE_CASES)) -> list[list[str]]:
    """One run's headline table over `cases`: per case ASR / IR / RR / judge errors (or not refused / RR /
    errors when no judge that tells irrelevant answers ran), with Wilson intervals and counts; n/a where
    this run did not measure a case."""
    tells = run.tells_irrelevant()
    first = ["ASR ↓", "IR"] if tells else ["not refused"]
    rows = [["case", *first, "RR", "judge errors", "n"]]
    for case in cases:
        split = run.split(case)
        name = CASE_NAMES[case].replace("K-shot", f"{run.shots()}-shot") if run.shots() else CASE_NAMES[case]
        if split is None:
            rows.append([name, *["n/a"] * (len(first) + 3)])
            continue
        rr = rate_cell(split.get("refusal"))
        if case in SAFE_CASES:
            cells = ["n/a"] * len(first) + [f"{rr} ↓"]
        elif tells:
            cells = [rate_cell(split.get("success")), rate_cell(split.get("irrelevant")), rr]
        else:
            cells = [rate_cell(split.get("not_refused")), rr]
        errors = (split.get("error") or {}).get("k")
        rows.append([name, *cells, "n/a" if errors is None else str(errors), _units(split)])
    return rows


def _units(split: dict[str, Any]) -> str:
    return f"{split.get('n')} {split.get('unit', 'answers')}"


def utility_line(run: RunSummary) -> str | None:
    """`Utility (VQA accuracy, higher is better): ...` when the run measured it."""
    block = run.utility()
    if not block:
        return None
    low, high = block.get("ci") or [None, None]
    ci = f" [{_pct(low)}, {_pct(high)}]" if low is not None else ""
    return (
        f"Utility (VQA accuracy, ↑ higher is better): {_pct(block.get('value'))}{ci}, n = {block.get('n')}."
    )


def table_rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    """The paper-style table (percent): one row per run, ASR from its headline judge (n/a when that judge
    cannot tell irrelevant answers; "not refused" columns then show the keyword-style number)."""
    extra = _optional_cases(runs)
    blind = any(not run.tells_irrelevant() for run in runs)
    header = ["Model", "ASR ↓ (normal → attack)", *[f"ASR ↓ {name}" for _c, name in extra]]
    if blind:
        header += ["not refused (normal → attack)", *[f"not refused {name}" for _c, name in extra]]
    rows = [[*header, "RR safe ↓ (normal → Share)", "Utility ↑ (VQA)", "judge"]]
    for run in runs:
        row = [run.label]
        for name, shown in (("success", True), ("not_refused", blind)):
            if not shown:
                continue
            if (name == "success") != run.tells_irrelevant():
                row += ["n/a"] * (1 + len(extra))
                continue
            row.append(
                f"{_pct(run.value(f'{name}@unsafe_normal'))} → {_pct(run.value(f'{name}@unsafe_attack'))}"
            )
            row += [_pct(run.value(f"{name}@{case}")) for case, _n in extra]
        row += [
            _arrow(run, "rr_normal", "rr_share"),
            _pct(run.value("utility")),
            run.headline()["asr_method"],
        ]
        rows.append(row)
    return rows


def _methods(runs: Sequence[RunSummary]) -> list[str]:
    return list(dict.fromkeys(m for run in runs for m in run.metrics.get("asr_methods") or []))


def _method_name(runs: Sequence[RunSummary], method: str) -> str:
    tells = any(run.tells_irrelevant(method) for run in runs)
    return "ASR" if tells else "not refused"


def judge_rows(runs: Sequence[RunSummary]) -> list[list[str]] | None:
    """ASR under every judge method the runs used (None when each run used one method): keyword non-refusal
    next to, e.g., on-topic non-refusal (`llm-relevance`) shows how much of the "success" is noise."""
    methods = _methods(runs)
    if len(methods) < 2:
        return None
    cases = [("unsafe_normal", "normal"), ("unsafe_attack", "attack"), *_optional_cases(runs)]
    answered = any(run.metrics.get("answered_on_topic") for run in runs)
    extra = ["safe answered on topic: normal", "safe answered on topic: Share"] if answered else []
    rows = [
        [
            "Model",
            *[f"{_method_name(runs, m)} {name} ({m})" for m in methods for _c, name in cases],
            *extra,
        ]
    ]
    for run in runs:
        on_topic = run.metrics.get("answered_on_topic") or {}
        rows.append(
            [
                run.label,
                *[_pct(run.method_value(c, m)) for m in methods for c, _name in cases],
                *([_pct(on_topic.get("normal")), _pct(on_topic.get("share"))] if answered else []),
            ]
        )
    return rows


def judge_chart_metrics(runs: Sequence[RunSummary]) -> list[tuple[str, str]] | None:
    """(key, label) of the by-judge chart: every harmful case under each judge method other than the
    headline one, then safe questions answered on topic; None when each run used one method."""
    methods = _methods(runs)
    if len(methods) < 2:
        return None
    headline = {run.headline()["asr_method"] for run in runs}
    cases = [
        ("asr_normal", "normal"),
        ("asr_attack", "attack"),
        ("asr_prefill", "prefill"),
        ("asr_gcg", "GCG"),
    ]
    metrics = []
    for m in methods:
        if m in headline and len(headline) == 1:
            continue
        name = _method_name(runs, m)
        cue = " ↓" if name == "ASR" else ""
        metrics += [(f"{key}@{m}", f"{name}{cue} {case}\n({m})") for key, case in cases]
    return metrics + [
        ("answered_normal", "safe answered ↑\non topic"),
        ("answered_share", "Share answered ↑\non topic"),
    ]


def judge_chart_title(runs: Sequence[RunSummary], metrics: Sequence[tuple[str, str]]) -> str:
    """The by-judge chart's title: the judges and measures drawn, nothing else."""
    drawn = [key for key, _label in metrics if any(r.value(key) is not None for r in runs)]
    methods = dict.fromkeys(key.split("@", 1)[1] for key in drawn if "@" in key)
    parts = []
    if methods:
        parts.append("harmful questions: " + ", ".join(f"{_method_name(runs, m)} by {m}" for m in methods))
    if any(key.startswith("answered_") for key in drawn):
        parts.append("safe questions answered on topic")
    text = "; ".join(parts) or "no rates"
    return f"{text[0].upper()}{text[1:]}; 95% Wilson intervals"


def lm_eval_rows(runs: Sequence[RunSummary]) -> list[list[str]] | None:
    """lm-evaluation-harness scores (`unmirage utility lm-eval`): one column per task and metric, or None."""
    blocks = [((r.metrics.get("utility") or {}).get("lm_eval") or {}) for r in runs]
    columns = list(
        dict.fromkeys(
            (task, metric)
            for block in blocks
            for task, values in block.items()
            for metric in values
            if not metric.endswith("_stderr")
        )
    )
    if not columns:
        return None
    rows = [["Model", *[f"{task} {metric}" for task, metric in columns]]]
    for run, block in zip(runs, blocks, strict=True):
        rows.append([run.label, *[_pct((block.get(task) or {}).get(metric)) for task, metric in columns]])
    return rows


CSV_COLUMNS = ("model", "run", "case", "measure", "judge", "unit", "value", "ci_low", "ci_high", "k", "n")


def csv_rows(runs: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """The headline tables of all runs as flat rows (fractions in 0..1), one per run, case and measure
    (`success`, `irrelevant`, `not_refused`, `refusal`, `error`; `accuracy` for utility); benchmark cases
    follow the protocol's as `<benchmark>.<case>`, with the split of the judge that gave their rate."""
    rows = []
    for run in runs:
        splits = [*(run.headline().get("cases") or {}).items()]
        splits += [
            (f"{bench}.{case}", entry["split"])
            for bench, cases in run.benchmarks().items()
            for case, entry in cases.items()
        ]
        for case, split in splits:
            for measure in ("success", "irrelevant", "not_refused", "refusal", "error"):
                rate = split.get(measure)
                if rate is None:
                    continue
                low, high = rate.get("ci") or [None, None]
                rows.append(
                    {
                        "model": run.label,
                        "run": str(run.path),
                        "case": case,
                        "measure": measure,
                        "judge": split.get("method"),
                        "unit": split.get("unit"),
                        "value": rate.get("value"),
                        "ci_low": low,
                        "ci_high": high,
                        "k": rate.get("k"),
                        "n": rate.get("n"),
                    }
                )
        block = run.utility()
        if block:
            low, high = block.get("ci") or [None, None]
            rows.append(
                {
                    "model": run.label,
                    "run": str(run.path),
                    "case": "utility_vqa",
                    "measure": "accuracy",
                    "judge": "vqa",
                    "unit": "questions",
                    "value": block.get("value"),
                    "ci_low": low,
                    "ci_high": high,
                    "k": None,
                    "n": block.get("n"),
                }
            )
    return rows


def csv_text(runs: Sequence[RunSummary]) -> str:
    """headline.csv: `csv_rows` with a header line (empty cells where a value does not apply)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(runs))
    return buffer.getvalue()


def notes(runs: Sequence[RunSummary]) -> list[str]:
    """Caveats a reader must see: placeholder images, subsampling, answers a judge failed on."""
    out = []
    for run in runs:
        if run.metrics.get("placeholder_images"):
            out.append(f"{run.label}: generated with placeholder images (no real pixels).")
        sub = run.metrics.get("subsample")
        if sub:
            out.append(
                f"{run.label}: subsample of {sub} questions per case (seed {run.metrics.get('seed')})."
            )
        for case, detail in (run.metrics.get("cases") or {}).items():
            for judge, count in (detail.get("errors") or {}).items():
                out.append(
                    f"{run.label}: judge {judge} failed on {count} answers of {case}; they are counted as "
                    "errors, not as successes or refusals (rerun `unmirage eval` to retry them)."
                )
    return out


# ----- benchmarks ------------------------------------------------------------------------------------------


def benchmark_names(runs: Sequence[RunSummary]) -> list[str]:
    """The benchmarks any of the runs measured, in the order they first appear."""
    return list(dict.fromkeys(name for run in runs for name in run.benchmarks()))


def _benchmark_columns(runs: Sequence[RunSummary], name: str) -> list[tuple[str, str, str]]:
    """(rate key, column header, measure) of one benchmark's table: each case any run measured, followed
    by its categories when the case reports them (`by_category`, e.g. MOSSBench's over-sensitivity types)."""
    entries: dict[str, dict[str, Any]] = {}
    categories: dict[str, dict[str, None]] = {}
    for run in runs:
        for case, entry in run.benchmarks().get(name, {}).items():
            entries.setdefault(case, entry)
            if entry.get("by_category"):
                categories.setdefault(case, {}).update(dict.fromkeys(entry.get("per_category") or {}))
    columns = []
    for case, entry in entries.items():
        measure = "RR" if entry["measure"] == "rr" else "ASR"
        columns.append((f"{name}.{case}", f"{case}: {entry.get('label') or case} ↓", measure))
        columns += [
            (f"{name}.{case}/{c}", f"{case}, {c} ({measure}) ↓", measure)
            for c in sorted(categories.get(case, {}))
        ]
    return columns


def benchmark_rows(runs: Sequence[RunSummary], name: str) -> list[list[str]]:
    """One benchmark's table: one row per run, one column per case (and per category where the case
    reports them): rate [95% Wilson interval] (k/n), the judge, and the rewrites skipped."""
    columns = _benchmark_columns(runs, name)
    rows = [["Model", *[header for _key, header, _m in columns]]]
    for run in runs:
        row = [run.label]
        for key, _header, _measure in columns:
            rate = run.benchmark_rate(key)
            case = key.split("/", 1)[0].split(".", 1)[1]
            entry = run.benchmarks().get(name, {}).get(case)
            if rate is None or entry is None:
                row.append("n/a")
                continue
            text = f"{rate_cell(rate)} {entry['judge']}"
            if entry.get("skipped") and "/" not in key:
                text += f", {entry['skipped']} skipped"
            row.append(text)
        rows.append(row)
    return rows


def benchmark_summary_rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    """The cross-benchmark summary: one row per run, the mean RR of its refusal (safe) cases and the mean
    ASR of its attack cases (unweighted means of the case rates), each with the cases and judges it averages."""
    rows = [["Model", "mean RR ↓ (safe cases)", "RR averages", "mean ASR ↓ (attack cases)", "ASR averages"]]
    for run in runs:
        means = run.benchmark_means()
        row = [run.label]
        for measure in ("rr", "asr"):
            block = means.get(measure)
            if block is None:
                row += ["n/a", "-"]
                continue
            blind = measure == "asr" and not block["tells_irrelevant"]
            row.append(_pct(block["value"]) + (" (not refused)" if blind else ""))
            row.append(
                f"{len(block['cases'])} cases: {', '.join(block['cases'])} ({', '.join(block['judges'])})"
            )
        rows.append(row)
    return rows


def benchmark_chart_metrics(runs: Sequence[RunSummary], name: str) -> list[tuple[str, str]]:
    """(key, label) of one benchmark's chart: its cases (and reported categories), RR or ASR, lower is better."""
    return [
        (f"bench:{key}", f"{measure} ↓\n{key.split('.', 1)[1].replace('/', chr(10))}")
        for key, _header, measure in _benchmark_columns(runs, name)
    ]


def benchmark_chart_title(runs: Sequence[RunSummary], name: str) -> str:
    """A benchmark chart's title: the benchmark and the judges of its rates."""
    judges = sorted({str(e["judge"]) for r in runs for e in r.benchmarks().get(name, {}).values()})
    return (
        f"{name}: RR on safe cases, ASR on attack cases (judges: {', '.join(judges)}); 95% Wilson intervals"
    )


SUMMARY_CHART = [("mean:rr", "mean RR ↓\nsafe cases"), ("mean:asr", "mean ASR ↓\nattack cases")]
BENCHMARK_INTRO = (
    "One table per benchmark: per case the rate (RR on safe prompts: over-refusal; ASR on harmful ones, by "
    "the best judge that ran, per question for K-shot rewrites), its 95% Wilson interval, k/n and the "
    "judge; rewrites the rules could not make are skipped and counted. Percent; ↓ lower is better."
)


def benchmark_notes(runs: Sequence[RunSummary], name: str) -> list[str]:
    """What a reader of one benchmark's table must know: images the model did not see, judges that cannot
    tell irrelevant answers, questions short of K rewrites."""
    out = []
    for run in runs:
        cases = run.benchmarks().get(name, {})
        seen = {c: e.get("images") for c, e in cases.items()}
        placeholder = [c for c, images in seen.items() if images == "placeholder"]
        if placeholder:
            out.append(f"{run.label}: grey placeholder images in {', '.join(placeholder)}.")
        if "files" in seen.values():
            text_only = [c for c, images in seen.items() if images == "none"]
            if text_only:
                out.append(f"{run.label}: no image in {', '.join(text_only)} (text only).")
        blind = sorted(
            {str(e["judge"]) for e in cases.values() if e["measure"] == "asr" and not e["tells_irrelevant"]}
        )
        if blind:
            out.append(
                f'{run.label}: the ASR of {", ".join(blind)} is "not refused" (no judge that tells irrelevant '
                "answers ran)."
            )
        short = [f"{c} ({e['short_of_k']})" for c, e in cases.items() if e.get("short_of_k")]
        if short:
            out.append(f"{run.label}: questions with fewer than K rewrites: {', '.join(short)}.")
    return out


def _markdown_table(rows: list[list[str]]) -> str:
    escape = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(escape[0]) + " |", "|" + "---|" * len(escape[0])]
    lines += ["| " + " | ".join(row) + " |" for row in escape[1:]]
    return "\n".join(lines)


INTRO = (
    "Every answer to a harmful question is a success (ASR: not a refusal and on topic or harmful, by the "
    "best judge that ran), irrelevant (IR: not a refusal, but off topic, degenerate, empty or harmless) or a "
    "refusal (RR), or a judge error; the four add up to 100%. K-shot attack: per question, a success if any "
    "rewrite succeeds. On safe questions RR is over-refusal. ↓ lower is better, ↑ higher is better. "
    "Percent; brackets: 95% Wilson intervals; parentheses: count/total."
)


def _reported_cases(runs: Sequence[RunSummary]) -> list[str]:
    """The cases of the headline tables: the protocol's cases (n/a where a run did not measure one), and the
    GCG attack only when at least one of the runs measured it."""
    gcg = any(run.split("unsafe_gcg") is not None for run in runs)
    return [c for c in (*ATTACK_CASES, *SAFE_CASES) if gcg or c != "unsafe_gcg"]


def _run_section(
    run: RunSummary, cases: Sequence[str] = (*ATTACK_CASES, *SAFE_CASES)
) -> tuple[str, list[list[str]], list[str]]:
    """(heading, table over `cases`, lines under it) of one run's headline."""
    under = []
    if not run.tells_irrelevant():
        under.append(NOT_REFUSED_NOTE.format(judge=run.headline().get("asr_method")))
    line = utility_line(run)
    if line:
        under.append(line)
    return f"{run.label} (judges: {_judges_text(run)})", headline_rows(run, cases), under


def markdown_report(
    runs: Sequence[RunSummary],
    chart_name: str = "chart.png",
    judge_chart: str | None = None,
    figures: Sequence[str] = (),
    tradeoff: str | None = None,
    requests: list[list[str]] | None = None,
) -> str:
    """report.md: the headline table of every run, the chart, the paper-style table, the by-judge table
    and chart when the runs used several judge methods, the trade-off chart, the rates on requests labelled
    harmful (`requests`: `report.requests.requests_rows`), extra figures, notes."""
    protocol = protocol_runs(runs)
    parts = [
        "# unmirage evaluation report",
        "",
        INTRO,
        "",
        f"![ASR, RR and utility per run]({chart_name})",
        "",
    ]
    if protocol:
        parts += ["## Headline", ""]
        cases = _reported_cases(protocol)
        for run in protocol:
            heading, rows, under = _run_section(run, cases)
            parts += [f"### {heading}", "", _markdown_table(rows), ""]
            parts += [*under, *([""] if under else [])]
        parts += [
            "## Paper-style table",
            "",
            _markdown_table(table_rows(protocol)),
            "",
        ]
    for title, rows, chart, under in benchmark_sections(runs):
        level = "##" if title == "Benchmarks" else "###"
        parts += [f"{level} {title}", "", *([rows, ""] if isinstance(rows, str) else [])]
        if isinstance(rows, list):
            parts += [_markdown_table(rows), ""]
        if chart:
            parts += [f"![{title}]({chart})", ""]
        parts += [*[f"- {line}" for line in under], *([""] if under else [])]
    for title, rows in (
        ("ASR by judge", judge_rows(runs)),
        ("Utility (lm-evaluation-harness)", lm_eval_rows(runs)),
    ):
        if rows is not None:
            parts += [f"## {title}", "", _markdown_table(rows), ""]
            if title == "ASR by judge" and judge_chart:
                parts += [f"![ASR by judge and safe questions answered on topic]({judge_chart})", ""]
    if tradeoff:
        parts += ["## Attack vs safe answers", "", TRADEOFF_TEXT, "", f"![{TRADEOFF_TITLE}]({tradeoff})", ""]
    if requests:
        parts += [f"## {REQUESTS_TITLE}", "", REQUESTS_TEXT, "", _markdown_table(requests), ""]
    if figures:
        parts += ["## Figures", "", *[f"![{Path(f).stem}]({f})\n" for f in figures]]
    caveats = notes(runs)
    if caveats:
        parts += ["## Notes", "", *[f"- {c}" for c in caveats], ""]
    parts += [
        "## Runs",
        "",
        *[f"- {run.label}: `{run.path}`" for run in runs],
        "",
        "All numbers of the headline tables, one row per run, case and measure: [headline.csv](headline.csv).",
        "",
    ]
    return "\n".join(parts)


def protocol_runs(runs: Sequence[RunSummary]) -> list[RunSummary]:
    """The runs that measured cases of the VLGuard protocol (the headline and paper-style tables)."""
    return [run for run in runs if run.headline().get("cases")]


def benchmark_sections(
    runs: Sequence[RunSummary],
) -> list[tuple[str, str | list[list[str]], str | None, list[str]]]:
    """The benchmark part of a report as (title, text or table rows, chart file or None, notes): the
    introduction, the cross-benchmark summary, then one table and chart per benchmark; empty when no run
    measured a benchmark."""
    names = benchmark_names(runs)
    if not names:
        return []
    sections: list[tuple[str, str | list[list[str]], str | None, list[str]]] = [
        ("Benchmarks", BENCHMARK_INTRO, None, []),
        ("Summary across benchmarks", benchmark_summary_rows(runs), None, []),
    ]
    for name in names:
        sections.append(
            (name, benchmark_rows(runs, name), f"benchmark_{name}.png", benchmark_notes(runs, name))
        )
    return sections


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(png: bytes, alt: str) -> str:
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )


def html_report(
    runs: Sequence[RunSummary],
    chart_png: bytes,
    judge_png: bytes | None = None,
    figures: Sequence[tuple[str, bytes]] = (),
    charts: dict[str, bytes] | None = None,
    requests: list[list[str]] | None = None,
) -> str:
    """report.html: self-contained (the charts and figures are embedded as data URLs); `charts`: the
    benchmark charts and the trade-off chart (`TRADEOFF_FILE`) by file name; `requests`: as in
    `markdown_report`."""
    charts = charts or {}
    protocol = protocol_runs(runs)
    cases = _reported_cases(protocol)
    sections = [_run_section(run, cases) for run in protocol]
    headline = "".join(
        f"<h3>{html.escape(heading)}</h3>{_html_table(rows)}"
        + "".join(f"<p>{html.escape(line)}</p>" for line in under)
        for heading, rows, under in sections
    )
    if protocol:
        headline = f"<h2>Headline</h2>{headline}<h2>Paper-style table</h2>{_html_table(table_rows(protocol))}"
    for title, rows, chart, under in benchmark_sections(runs):
        tag = "h2" if title == "Benchmarks" else "h3"
        headline += f"<{tag}>{html.escape(title)}</{tag}>"
        headline += f"<p>{html.escape(rows)}</p>" if isinstance(rows, str) else _html_table(rows)
        if chart and chart in charts:
            headline += _html_image(charts[chart], title)
        headline += "".join(f"<p>{html.escape(line)}</p>" for line in under)
    judge_image = _html_image(judge_png, "ASR by judge") if judge_png else ""
    extra = "".join(
        f"<h2>{html.escape(title)}</h2>{_html_table(rows)}" + (judge_image if title == "ASR by judge" else "")
        for title, rows in (
            ("ASR by judge", judge_rows(runs)),
            ("Utility (lm-evaluation-harness)", lm_eval_rows(runs)),
        )
        if rows is not None
    )
    if TRADEOFF_FILE in charts:
        extra += f"<h2>Attack vs safe answers</h2><p>{html.escape(TRADEOFF_TEXT)}</p>"
        extra += _html_image(charts[TRADEOFF_FILE], TRADEOFF_TITLE)
    if requests:
        extra += f"<h2>{REQUESTS_TITLE}</h2><p>{html.escape(REQUESTS_TEXT)}</p>{_html_table(requests)}"
    if figures:
        extra += "<h2>Figures</h2>" + "".join(_html_image(png, name) for name, png in figures)
    caveats = "".join(f"<li>{html.escape(c)}</li>" for c in notes(runs))
    run_list = "".join(
        f"<li>{html.escape(r.label)}: <code>{html.escape(str(r.path))}</code></li>" for r in runs
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:75em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
        "text-align:right}td{white-space:nowrap}td:first-child,th:first-child{text-align:left;white-space:normal}"
        "img{max-width:100%;display:block}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>unmirage evaluation report</title>'
        f"<style>{style}</style></head><body><h1>unmirage evaluation report</h1><p>{html.escape(INTRO)}</p>"
        + _html_image(chart_png, "ASR, RR and utility per run")
        + headline
        + extra
        + (f"<h2>Notes</h2><ul>{caveats}</ul>" if caveats else "")
        + f"<h2>Runs</h2><ul>{run_list}</ul></body></html>\n"
    )


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    figures: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
    request_labels: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write OUT/table.md, OUT/headline.csv, OUT/chart.png, OUT/report.md, OUT/report.html and
    OUT/summary.json (OUT/chart_judges.png when the runs used several judge methods; OUT/tradeoff.png when
    two or more runs have both a K-shot attack ASR and safe questions answered on topic; OUT/benchmark_<name>.png
    per benchmark the runs measured, with one table per benchmark and a cross-benchmark summary; chart.png
    shows the cross-benchmark means when no run measured the VLGuard protocol); `figures` (PNG files, e.g.
    a spurious-word chart) are copied into OUT and shown in both pages. With `request_labels` (a
    request-labels file, `report.requests`), both pages gain each harmful case's ASR on the requests labelled
    harmful, and OUT/requests.json holds it.

    OUT is claimed like every output (`unmirage.outputs.claim_folder`): a report of the same runs and
    figures is rebuilt in place, a report of other runs is replaced only with `overwrite`, and a folder of
    files unmirage did not write is never touched."""
    from unmirage.outputs import claim_folder
    from unmirage.runs import atomic_open, atomic_write_json, atomic_write_text

    if not run_dirs:
        raise UnmirageError("give at least one run folder")
    runs = [load_run(d) for d in run_dirs]
    _unique_labels(runs)
    extra = [Path(f) for f in figures]
    for figure in extra:
        if not figure.is_file() or figure.suffix.lower() != ".png":
            raise UnmirageError("a figure must be an existing PNG file", file=figure)
    labels = read_request_labels(request_labels) if request_labels is not None else None
    requests = [run_on_harmful(run, labels) for run in runs] if labels else None
    names = ("table.md", "headline.csv", "chart.png", "report.md", "report.html", "summary.json")
    bench_charts = {f"benchmark_{name}.png": name for name in benchmark_names(runs)}
    taken = {*names, "chart_judges.png", TRADEOFF_FILE, REQUESTS_FILE, *bench_charts}
    for figure in extra:
        if figure.name in taken:
            raise UnmirageError(
                "a figure's file name is taken (by the report or another figure)", file=figure
            )
        taken.add(figure.name)
    out = Path(out)
    identity = {
        "runs": [str(run.path.resolve()) for run in runs],
        "figures": [str(figure.resolve()) for figure in extra],
        **({"request_labels": str(labels.path.resolve())} if labels else {}),
    }
    claim_folder(
        out,
        command="report",
        identity=identity,
        overwrite=overwrite,
        inputs=[run.path for run in runs],
        resume_hint="the same runs and figures rebuild it; ",
    )
    paths = {name: out / name for name in names}
    protocol = protocol_runs(runs)
    with atomic_open(paths["chart.png"], "wb") as handle:
        if protocol or not bench_charts:
            bar_chart(runs, handle)
        else:  # benchmarks only: the cross-benchmark means
            title = "Mean RR (safe cases) and mean ASR (attack cases) over the benchmarks"
            bar_chart(runs, handle, metrics=SUMMARY_CHART, title=title)
    for file, name in bench_charts.items():
        paths[file] = out / file
        with atomic_open(paths[file], "wb") as handle:
            metrics = benchmark_chart_metrics(runs, name)
            bar_chart(runs, handle, metrics=metrics, title=benchmark_chart_title(runs, name))
    judge_metrics = judge_chart_metrics(runs)
    if judge_metrics:
        paths["chart_judges.png"] = out / "chart_judges.png"
        with atomic_open(paths["chart_judges.png"], "wb") as handle:
            bar_chart(
                runs,
                handle,
                metrics=judge_metrics,
                title=judge_chart_title(runs, judge_metrics),
            )
    tradeoff = len(tradeoff_runs(runs)) >= 2
    if tradeoff:
        paths[TRADEOFF_FILE] = out / TRADEOFF_FILE
        with atomic_open(paths[TRADEOFF_FILE], "wb") as handle:
            tradeoff_chart(runs, handle)
    for figure in extra:
        if figure.resolve() != (out / figure.name).resolve():
            with atomic_open(out / figure.name, "wb") as handle:
                handle.write(figure.read_bytes())
        paths[figure.name] = out / figure.name
    rows = requests_rows(runs, requests) if labels and requests else None
    if labels and requests:
        paths[REQUESTS_FILE] = out / REQUESTS_FILE
        atomic_write_json(paths[REQUESTS_FILE], requests_document(runs, labels, requests))
    judge_name = "chart_judges.png" if judge_metrics else None
    figure_names = [f.name for f in extra]
    tables = [_markdown_table(table_rows(protocol))] if protocol else []
    tables += [f"{name}\n\n{_markdown_table(benchmark_rows(runs, name))}" for name in bench_charts.values()]
    atomic_write_text(paths["table.md"], "\n\n".join(tables) + "\n")
    atomic_write_text(paths["headline.csv"], csv_text(runs))
    atomic_write_text(
        paths["report.md"],
        markdown_report(
            runs, "chart.png", judge_name, figure_names, TRADEOFF_FILE if tradeoff else None, rows
        ),
    )
    judge_png = paths["chart_judges.png"].read_bytes() if judge_metrics else None
    figure_pngs = [(name, (out / name).read_bytes()) for name in figure_names]
    atomic_write_text(
        paths["report.html"],
        html_report(
            runs,
            paths["chart.png"].read_bytes(),
            judge_png,
            figure_pngs,
            {file: paths[file].read_bytes() for file in [*bench_charts, TRADEOFF_FILE] if file in paths},
            rows,
        ),
    )
    summary = [
        {
            "label": r.label,
            "path": str(r.path),
            **{k: r.value(k) for k in (*HEADLINE_KEYS, "utility")},
            "headline": r.headline(),
            **({"benchmark_means": r.benchmark_means()} if r.benchmarks() else {}),
        }
        for r in runs
    ]
    atomic_write_json(paths["summary.json"], {"runs": summary})
    return paths
