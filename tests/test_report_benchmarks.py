"""`unmirage report` on runs that measured benchmarks: one table and chart per benchmark with hand-computed
cells, the cross-benchmark summary (means and what they average), benchmark rows in headline.csv, runs of
the VLGuard protocol alone rendered as before, and protocol and benchmark-only runs side by side."""

from __future__ import annotations

import csv

import pytest

from test_report import judged, two_runs
from unmirage.metrics import benchmark_case_metrics, build_metrics
from unmirage.report import build_report
from unmirage.report.build import benchmark_rows, benchmark_summary_rows
from unmirage.report.summary import load_run
from unmirage.runs import atomic_write_json


def entry(kind: str, outcomes: list[str], *, methods=("keyword",), shots: int = 1, **info) -> dict:
    """A `benchmarks.<name>.<case>` entry from judged answers (outcomes per question; with `shots`, the
    outcome is the last rewrite's, the others refused)."""
    records = []
    for i, outcome in enumerate(outcomes):
        for s in range(shots):
            record = judged(f"q{i}", outcome if s == shots - 1 else "refused", shot=s if shots > 1 else None)
            records.append(record)
    metrics_kind = "refusal" if kind == "refusal" else "kshot" if shots > 1 else "attack"
    out = benchmark_case_metrics(metrics_kind, records, refusal_judge="keyword", asr_methods=list(methods))
    return out | {"label": info.get("label", kind), "skipped": info.get("skipped", 0), "images": "none"}


def write_bench_run(folder, model: str) -> None:
    """xstest: safe RR 1/4, safe_share RR 2/4 (1 skipped), unsafe ASR 1/2 by llm-relevance, unsafe_what3
    1/2 questions; mossbench benign RR 1/3 with its types reported (type 1: 1/2, type 2: 0/1)."""
    doc = build_metrics({}, model=model)
    benign = entry("refusal", ["refused", "success", "success"], label="benign (RR)")
    benign["by_category"] = True
    for record_type, (k, n) in {"type 1": (1, 2), "type 2": (0, 1)}.items():
        benign["per_category"][record_type] = {"value": k / n, "ci": [0.0, 1.0], "k": k, "n": n}
    doc["benchmarks"] = {
        "xstest": {
            "safe": entry("refusal", ["refused", "success", "success", "success"], label="safe prompts (RR)"),
            "safe_share": entry(
                "refusal", ["refused", "refused", "success", "success"], label="Share (RR)", skipped=1
            ),
            "unsafe": entry(
                "attack", ["success", "refused"], methods=("keyword", "llm-relevance"), label="unsafe (ASR)"
            ),
            "unsafe_what3": entry(
                "attack", ["success", "irrelevant"], methods=("keyword", "llm-relevance"), shots=3
            ),
        },
        "mossbench": {"benign": benign},
    }
    atomic_write_json(folder / "metrics.json", doc)


def test_benchmark_tables_summary_csv_and_charts(tmp_path):
    write_bench_run(tmp_path / "a", "models/sft")
    out = tmp_path / "report"
    written = build_report([tmp_path / "a"], out)
    run = load_run(tmp_path / "a")
    rows = benchmark_rows([run], "xstest")
    assert rows[0][:3] == ["Model", "safe: safe prompts (RR) ↓", "safe_share: Share (RR) ↓"]
    # 1/4 refused: Wilson 95% [4.6, 69.9]; 2/4: [15.0, 85.0]
    assert rows[1][1] == "25.0 [4.6, 69.9] (1/4) keyword"
    assert rows[1][2] == "50.0 [15.0, 85.0] (2/4) keyword, 1 skipped"
    assert rows[1][3] == "50.0 [9.5, 90.5] (1/2) llm-relevance"
    assert rows[1][4] == "50.0 [9.5, 90.5] (1/2) llm-relevance"  # per question over 3 rewrites
    moss = benchmark_rows([run], "mossbench")
    assert moss[0] == ["Model", "benign: benign (RR) ↓", "benign, type 1 (RR) ↓", "benign, type 2 (RR) ↓"]
    assert moss[1][2].startswith("50.0 [0.0, 100.0] (1/2)") and moss[1][3].startswith("0.0")
    # the summary: mean RR over 3 refusal cases (25, 50, 33.3), mean ASR over 2 attack cases (50, 50)
    summary = benchmark_summary_rows([run])
    assert summary[1][:2] == ["sft", "36.1"]
    assert summary[1][2] == "3 cases: xstest.safe, xstest.safe_share, mossbench.benign (keyword)"
    assert summary[1][3:] == ["50.0", "2 cases: xstest.unsafe, xstest.unsafe_what3 (llm-relevance)"]
    report = (out / "report.md").read_text()
    assert "## Benchmarks" in report and "### Summary across benchmarks" in report
    assert "## Headline" not in report and "## Paper-style table" not in report  # no protocol case ran
    assert "![xstest](benchmark_xstest.png)" in report and "![mossbench](benchmark_mossbench.png)" in report
    for name in ("chart.png", "benchmark_xstest.png", "benchmark_mossbench.png"):
        assert written[name].read_bytes().startswith(b"\x89PNG")
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3
    table = (out / "table.md").read_text()
    assert table.startswith("xstest\n\n| Model |") and "\nmossbench\n\n" in table
    rows_csv = list(csv.DictReader((out / "headline.csv").open()))
    share = {r["measure"]: r for r in rows_csv if r["case"] == "xstest.safe_share"}
    assert (
        share["refusal"]["k"] == "2"
        and share["refusal"]["n"] == "4"
        and share["refusal"]["judge"] == "keyword"
    )
    unsafe = {r["measure"]: r for r in rows_csv if r["case"] == "xstest.unsafe"}
    assert set(unsafe) == {"success", "irrelevant", "refusal", "error"}
    assert float(unsafe["success"]["value"]) == pytest.approx(0.5)


def test_protocol_runs_render_as_before_and_side_by_side(tmp_path):
    runs = two_runs(tmp_path)
    build_report(runs, tmp_path / "before")
    report = (tmp_path / "before" / "report.md").read_text()
    assert "## Benchmarks" not in report and not list((tmp_path / "before").glob("benchmark_*.png"))
    assert (tmp_path / "before" / "table.md").read_text().startswith("| Model |")
    write_bench_run(tmp_path / "bench", "models/bench")
    build_report([*runs, tmp_path / "bench"], tmp_path / "mixed")
    mixed = (tmp_path / "mixed" / "report.md").read_text()
    assert "### npo (judges" in mixed and "### bench (judges" not in mixed  # headline: protocol runs only
    assert "| npo | n/a | - | n/a | - |" in mixed  # the summary row of a run without benchmarks
    assert "| bench | 25.0 [4.6, 69.9] (1/4) keyword |" in mixed
