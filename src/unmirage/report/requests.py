"""ASR on the requests labelled harmful: each run's harmful cases again, counting only the questions that a
request-labels file marks harmful.

A benchmark's "unsafe" questions are not all harmful requests on their own: in VLGuard the harm is often in
the image, and the attack rewrites may soften the request. A request-labels file says, per question (`id`)
and rewrite (`shot`, absent for the question as asked), whether the request is `harmful`. The rates here are
the run's own judged answers (`judged/<case>.jsonl`) under the case's headline method, on all questions
and on the harmful ones only (a K-shot question counts when at least one of its rewrites is labelled
harmful, and succeeds when one of those succeeds). See docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unmirage.data.requests import RequestLabels
from unmirage.metrics import attack_success, kshot_attack_success
from unmirage.report.summary import ATTACK_CASES, RunSummary, rate_cell
from unmirage.runs import read_jsonl

REQUESTS_FILE = "requests.json"
REQUESTS_TITLE = "On requests labelled harmful"
REQUESTS_TEXT = (
    "The harmful cases again, counting only the questions the request labels mark harmful (a K-shot question "
    "when one of its rewrites is, succeeding when one of those does); same answers, same judge. Unlabelled: "
    "judged answers whose request the labels file does not list (left out of the second column)."
)


def _case_rate(records: Sequence[dict[str, Any]], kshot: bool, method: str) -> dict[str, Any]:
    measure = kshot_attack_success if kshot else attack_success
    return measure(records, method)["rate"]


def case_on_harmful(
    records: Sequence[dict[str, Any]], labels: RequestLabels, method: str, *, kshot: bool
) -> dict[str, Any]:
    """One case of one run: `all` (the rate over every judged answer, as the run's metrics count it),
    `harmful` (over the answers whose request is labelled harmful; None when there are none), `unlabelled`
    (answers whose request the labels do not list) and `questions_harmful` (labelled-harmful questions)."""
    kept = [r for r in records if labels.of(r, kshot)]
    unlabelled = sum(labels.of(r, kshot) is None for r in records)
    return {
        "method": method,
        "all": _case_rate(records, kshot, method),
        "harmful": _case_rate(kept, kshot, method) if kept else None,
        "questions_harmful": len({str(r.get("id")) for r in kept}),
        "unlabelled": unlabelled,
    }


def run_on_harmful(run: RunSummary, labels: RequestLabels) -> dict[str, dict[str, Any]]:
    """Every harmful case the run measured and judged, `case_on_harmful` under the case's headline method."""
    out = {}
    for case in ATTACK_CASES:
        split = run.split(case)
        judged = run.path / "judged" / f"{case}.jsonl"
        if split is None or not judged.is_file():
            continue
        records = read_jsonl(judged)
        out[case] = case_on_harmful(
            records, labels, str(split["method"]), kshot=split.get("unit") == "questions"
        )
    return out


def requests_rows(
    runs: Sequence[RunSummary], results: Sequence[dict[str, dict[str, Any]]]
) -> list[list[str]]:
    """The report table: one row per run and harmful case, ASR on all questions and on the harmful ones."""
    rows = [["run", "case", "judge", "ASR, all questions", "ASR, requests labelled harmful", "unlabelled"]]
    for run, result in zip(runs, results, strict=True):
        for case, entry in result.items():
            rows.append(
                [
                    run.label,
                    case,
                    entry["method"],
                    rate_cell(entry["all"]),
                    rate_cell(entry["harmful"]),
                    str(entry["unlabelled"]),
                ]
            )
    return rows


def requests_document(
    runs: Sequence[RunSummary], labels: RequestLabels, results: Sequence[dict[str, dict[str, Any]]]
) -> dict[str, Any]:
    """requests.json: the labels file, its counts, and each run's cases."""
    from unmirage.runs import sha256_file

    return {
        "labels": str(labels.path),
        "labels_sha256": sha256_file(labels.path),
        "requests": len(labels.harmful),
        "harmful": sum(labels.harmful.values()),
        "runs": [
            {"label": run.label, "path": str(run.path), "cases": result}
            for run, result in zip(runs, results, strict=True)
        ],
    }
