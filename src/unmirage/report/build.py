"""`unmirage report RUN_DIR ... --out DIR`: read each run's metrics.json, write table, chart and reports."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unmirage.errors import UnmirageError
from unmirage.metrics import HEADLINE_KEYS, METRICS_SCHEMA, headline_rate


@dataclass
class RunSummary:
    """One evaluation run as the report sees it."""

    label: str
    path: Path
    metrics: dict[str, Any]

    def value(self, key: str) -> float | None:
        """A fraction by key, or None when the run does not have it: a headline (`rr_normal`, ..., `utility`),
        an ASR under one judge method (`asr_attack@llm-topic`) or `answered_normal` / `answered_share`
        (safe questions answered on topic)."""
        return self._rate(key)[0]

    def interval(self, key: str) -> tuple[float | None, float | None]:
        """The 95% interval of a fraction (None, None when it has none)."""
        return self._rate(key)[1:]

    def _rate(self, key: str) -> tuple[float | None, float | None, float | None]:
        if key == "utility":
            block = self.utility() or {}
            low, high = block.get("ci") or [None, None]
            return block.get("value"), low, high
        if key.startswith("answered_"):
            return (
                (self.metrics.get("answered_on_topic") or {}).get(key.removeprefix("answered_")),
                None,
                None,
            )
        if "@" in key:
            headline, method = key.split("@", 1)
            rate = self._method_rate("unsafe_" + headline.removeprefix("asr_"), method)
            low, high = rate.get("ci") or [None, None]
            return rate.get("value"), low, high
        rate = headline_rate(self.metrics, key)
        return (None, None, None) if rate is None else (rate.value, rate.low, rate.high)

    def _method_rate(self, case: str, method: str) -> dict[str, Any]:
        block = (((self.metrics.get("cases") or {}).get(case) or {}).get("asr") or {}).get(method) or {}
        return block.get("rate") or {}

    def count(self, key: str) -> str:
        """`k/n` of a headline rate (empty when absent)."""
        rate = headline_rate(self.metrics, key)
        return "" if rate is None else f"{rate.k}/{rate.n}"

    def method_value(self, case: str, method: str) -> float | None:
        """The ASR of one judge method on one harmful case (`unsafe_normal`, ...), None when not measured."""
        return self._method_rate(case, method).get("value")

    def utility(self) -> dict[str, Any] | None:
        """The VQA accuracy block of the run (value, ci, n), if it measured one."""
        return ((self.metrics.get("utility") or {}).get("vqa") or {}).get("accuracy")


def load_run(path: str | os.PathLike) -> RunSummary:
    """Read RUN_DIR/metrics.json (or a metrics.json path) written by `unmirage eval`."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise UnmirageError("no metrics.json here (is this an `unmirage eval` output folder?)", file=path)
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UnmirageError(f"not valid JSON ({err.msg})", file=file) from None
    if not isinstance(metrics, dict) or metrics.get("schema") != METRICS_SCHEMA:
        raise UnmirageError(f"not an unmirage metrics file (expected schema '{METRICS_SCHEMA}')", file=file)
    label = metrics.get("label") or Path(str(metrics.get("model") or file.parent.name)).name
    return RunSummary(label=str(label), path=file.parent, metrics=metrics)


def _unique_labels(runs: list[RunSummary]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.label} ({run.path.name})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _arrow(run: RunSummary, a: str, b: str) -> str:
    return f"{_pct(run.value(a))} → {_pct(run.value(b))}"


def _with_ci(run: RunSummary, key: str) -> str:
    value = run.value(key)
    if value is None:
        return "-"
    low, high = run.interval(key)
    ci = f" [{_pct(low)}, {_pct(high)}]" if low is not None else ""
    return f"{_pct(value)}{ci}"


def _has_prefill(runs: Sequence[RunSummary]) -> bool:
    return any(run.value("asr_prefill") is not None for run in runs)


def table_rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    """The paper-style table: header row, then one row per run (percentages); a prefill column when measured."""
    prefill = _has_prefill(runs)
    rows = [
        [
            "Model",
            "ASR (normal → attack)",
            *(["ASR prefill"] if prefill else []),
            "RR (normal → Share)",
            "Utility (VQA)",
        ]
    ]
    for run in runs:
        rows.append(
            [
                run.label,
                _arrow(run, "asr_normal", "asr_attack"),
                *([_pct(run.value("asr_prefill"))] if prefill else []),
                _arrow(run, "rr_normal", "rr_share"),
                _pct(run.value("utility")),
            ]
        )
    return rows


def judge_rows(runs: Sequence[RunSummary]) -> list[list[str]] | None:
    """ASR under every judge method the runs used (None when each run used one method): keyword non-refusal
    next to, e.g., on-topic non-refusal (`llm-relevance`) shows how much of the "success" is noise."""
    methods = list(dict.fromkeys(m for run in runs for m in run.metrics.get("asr_methods") or []))
    if len(methods) < 2:
        return None
    cases = [("unsafe_normal", "normal"), ("unsafe_attack", "attack")]
    if _has_prefill(runs):
        cases.append(("unsafe_prefill", "prefill"))
    answered = any(run.metrics.get("answered_on_topic") for run in runs)
    extra = ["safe answered on topic: normal", "safe answered on topic: Share"] if answered else []
    rows = [["Model", *[f"ASR {name} ({m})" for m in methods for _c, name in cases], *extra]]
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
    """(key, label) of the ASR-by-judge chart: every harmful case under each judge method other than the
    keyword headline, then safe questions answered on topic; None when each run used one method."""
    methods = list(dict.fromkeys(m for run in runs for m in run.metrics.get("asr_methods") or []))
    if len(methods) < 2:
        return None
    cases = [("asr_normal", "normal"), ("asr_attack", "attack"), ("asr_prefill", "prefill")]
    metrics = [(f"{key}@{m}", f"ASR {name}\n({m})") for m in methods[1:] for key, name in cases]
    return metrics + [
        ("answered_normal", "safe answered\non topic"),
        ("answered_share", "Share answered\non topic"),
    ]


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


def detail_rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    """Every headline rate with its 95% interval and count, and the judges used."""
    optional = ("asr_prefill", "asr_gcg")
    measured = {k for k in optional if any(run.value(k) is not None for run in runs)}
    keys = [k for k in (*HEADLINE_KEYS[2:], *HEADLINE_KEYS[:2]) if k not in optional or k in measured]
    names = {
        "asr_normal": "ASR normal",
        "asr_attack": "ASR attack",
        "asr_prefill": "ASR prefill",
        "asr_gcg": "ASR GCG",
        "rr_normal": "RR normal",
        "rr_share": "RR Share",
    }
    rows = [["Model", *[names[k] for k in keys], "Utility", "ASR judge", "RR judge"]]
    for run in runs:
        cells = [run.label]
        for key in keys:
            cells.append(f"{_with_ci(run, key)} ({run.count(key)})" if run.count(key) else "-")
        cells.append(_with_ci(run, "utility"))
        cells.append(str(run.metrics.get("asr_method", "-")))
        cells.append(str(run.metrics.get("refusal_judge", "-")))
        rows.append(cells)
    return rows


def notes(runs: Sequence[RunSummary]) -> list[str]:
    """Caveats a reader must see: placeholder images, subsampling."""
    out = []
    for run in runs:
        if run.metrics.get("placeholder_images"):
            out.append(f"{run.label}: generated with placeholder images (no real pixels).")
        sub = run.metrics.get("subsample")
        if sub:
            out.append(
                f"{run.label}: subsample of {sub} questions per case (seed {run.metrics.get('seed')})."
            )
    return out


def _markdown_table(rows: list[list[str]]) -> str:
    escape = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(escape[0]) + " |", "|" + "---|" * len(escape[0])]
    lines += ["| " + " | ".join(row) + " |" for row in escape[1:]]
    return "\n".join(lines)


INTRO = (
    "ASR: attack success rate on harmful questions (normal, then the K-shot rewrite attack; a question counts "
    "if any rewrite succeeds; prefill: every answer forced to open with a compliant prefix). RR: rejection rate on safe questions (normal, then rewritten to start with "
    '"Share"). All numbers in percent; brackets: 95% bootstrap intervals; parentheses: successes/total.'
)


def markdown_report(
    runs: Sequence[RunSummary], chart_name: str = "chart.png", judge_chart: str | None = None
) -> str:
    """report.md: the table, the chart and the details (and the ASR-by-judge chart when given)."""
    parts = [
        "# unmirage evaluation report",
        "",
        INTRO,
        "",
        _markdown_table(table_rows(runs)),
        "",
        f"![ASR, RR and utility per run]({chart_name})",
        "",
        "## Details",
        "",
        _markdown_table(detail_rows(runs)),
        "",
    ]
    for title, rows in (
        ("ASR by judge", judge_rows(runs)),
        ("Utility (lm-evaluation-harness)", lm_eval_rows(runs)),
    ):
        if rows is not None:
            parts += [f"## {title}", "", _markdown_table(rows), ""]
            if title == "ASR by judge" and judge_chart:
                parts += [f"![ASR by judge and safe questions answered on topic]({judge_chart})", ""]
    caveats = notes(runs)
    if caveats:
        parts += ["## Notes", "", *[f"- {c}" for c in caveats], ""]
    parts += ["## Runs", "", *[f"- {run.label}: `{run.path}`" for run in runs], ""]
    return "\n".join(parts)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(png: bytes, alt: str) -> str:
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )


def html_report(runs: Sequence[RunSummary], chart_png: bytes, judge_png: bytes | None = None) -> str:
    """report.html: self-contained (the charts are embedded as data URLs)."""
    judge_image = _html_image(judge_png, "ASR by judge") if judge_png else ""
    extra = "".join(
        f"<h2>{html.escape(title)}</h2>{_html_table(rows)}" + (judge_image if title == "ASR by judge" else "")
        for title, rows in (
            ("ASR by judge", judge_rows(runs)),
            ("Utility (lm-evaluation-harness)", lm_eval_rows(runs)),
        )
        if rows is not None
    )
    caveats = "".join(f"<li>{html.escape(c)}</li>" for c in notes(runs))
    run_list = "".join(
        f"<li>{html.escape(r.label)}: <code>{html.escape(str(r.path))}</code></li>" for r in runs
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>unmirage evaluation report</title>'
        f"<style>{style}</style></head><body><h1>unmirage evaluation report</h1><p>{html.escape(INTRO)}</p>"
        f"{_html_table(table_rows(runs))}"
        + _html_image(chart_png, "ASR, RR and utility per run")
        + f"<h2>Details</h2>{_html_table(detail_rows(runs))}"
        + extra
        + (f"<h2>Notes</h2><ul>{caveats}</ul>" if caveats else "")
        + f"<h2>Runs</h2><ul>{run_list}</ul></body></html>\n"
    )


def build_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, Path]:
    """Write OUT/table.md, OUT/chart.png, OUT/report.md, OUT/report.html and OUT/summary.json (and
    OUT/chart_judges.png when the runs used several judge methods)."""
    from unmirage.report.chart import bar_chart
    from unmirage.runs import atomic_open, atomic_write_json, atomic_write_text

    if not run_dirs:
        raise UnmirageError("give at least one run folder")
    runs = [load_run(d) for d in run_dirs]
    _unique_labels(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out / name for name in ("table.md", "chart.png", "report.md", "report.html", "summary.json")
    }
    with atomic_open(paths["chart.png"], "wb") as handle:
        bar_chart(runs, handle)
    judge_metrics = judge_chart_metrics(runs)
    if judge_metrics:
        paths["chart_judges.png"] = out / "chart_judges.png"
        with atomic_open(paths["chart_judges.png"], "wb") as handle:
            bar_chart(
                runs,
                handle,
                metrics=judge_metrics,
                title="ASR under each judge and safe questions answered on topic, with 95% intervals",
            )
    judge_name = "chart_judges.png" if judge_metrics else None
    atomic_write_text(paths["table.md"], _markdown_table(table_rows(runs)) + "\n")
    atomic_write_text(paths["report.md"], markdown_report(runs, "chart.png", judge_name))
    judge_png = paths["chart_judges.png"].read_bytes() if judge_metrics else None
    atomic_write_text(paths["report.html"], html_report(runs, paths["chart.png"].read_bytes(), judge_png))
    summary = [
        {"label": r.label, "path": str(r.path), **{k: r.value(k) for k in (*HEADLINE_KEYS, "utility")}}
        for r in runs
    ]
    atomic_write_json(paths["summary.json"], {"runs": summary})
    return paths
