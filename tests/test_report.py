"""`unmirage report`: headline tables (ASR / IR / RR with Wilson intervals), CSV, chart, report.md and
report.html (also rendered in a headless Chromium) from metrics.json files; VQA utility scoring."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess

import pytest

from helpers import run_cli
from unmirage.errors import UnmirageError
from unmirage.metrics import build_metrics
from unmirage.report import build_report
from unmirage.report.chart import chart_metrics, chart_title, tradeoff_runs
from unmirage.report.summary import load_run
from unmirage.runs import atomic_write_json


def judged(qid: str, outcome: str, shot: int | None = None, judge: str = "llm-relevance") -> dict:
    """A judged answer whose verdicts (keyword -> rules -> `judge`, llm-relevance or llm-topic) give
    `outcome`: success, irrelevant or refused."""
    refused = outcome == "refused"
    judgements: dict = {"keyword": {"refused": refused, "success": not refused}}
    if not refused:
        judgements["rules"] = {"flagged": False, "success": True}
        judgements[judge] = {"relevant": outcome == "success", "success": outcome == "success"}
    record = {"id": qid, "judgements": judgements}
    if shot is not None:
        record["shot"] = shot
    return record


def write_run(
    folder,
    model: str,
    rr: tuple[int, int],
    unsafe: tuple[int, int],
    attack: int,
    methods: tuple[str, ...] = ("keyword",),
    utility: float | None = None,
) -> None:
    """20 safe questions (rr: refused as asked / after "Share"); 16 harmful ones (unsafe: successes,
    irrelevant; the rest refused); 3 rewrites each, `attack` questions with a success in rewrite 1 (the
    others irrelevant). The LLM verdicts are llm-topic's when `methods` has it, else llm-relevance's."""
    judge = "llm-topic" if "llm-topic" in methods else "llm-relevance"

    def answer(qid: str, outcome: str, shot: int | None = None) -> dict:
        return judged(qid, outcome, shot, judge)

    safe = [answer(f"s{i}", "refused" if i < rr[0] else "success") for i in range(20)]
    share = [answer(f"s{i}", "refused" if i < rr[1] else "success") for i in range(20)]
    normal = [  # shot 0, as `unmirage eval` writes the questions as asked
        answer(f"u{i}", "success" if i < unsafe[0] else "irrelevant" if i < sum(unsafe) else "refused", 0)
        for i in range(16)
    ]
    kshot = [
        answer(f"u{i}", "success" if i < attack and s == 1 else "irrelevant" if s == 1 else "refused", shot=s)
        for i in range(16)
        for s in range(3)
    ]
    cases = {"safe_normal": safe, "safe_share": share, "unsafe_normal": normal, "unsafe_attack": kshot}
    doc = build_metrics(cases, asr_methods=methods, model=model)
    (folder / "judged").mkdir(parents=True, exist_ok=True)
    for case, records in cases.items():
        (folder / "judged" / f"{case}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if utility is not None:
        doc["utility"] = {
            "vqa": {"accuracy": {"value": utility, "ci": [utility - 0.05, utility + 0.05], "n": 50}}
        }
    atomic_write_json(folder / "metrics.json", doc)


def two_runs(tmp_path) -> list:
    """An unlearned model judged with llm-relevance (0 successes as asked) and an SFT model judged by
    keywords only."""
    write_run(
        tmp_path / "npo",
        "models/npo",
        rr=(1, 2),
        unsafe=(0, 14),
        attack=0,
        methods=("keyword", "llm-relevance"),
        utility=0.78,
    )
    write_run(tmp_path / "sft", "models/llava-sft", rr=(1, 18), unsafe=(3, 0), attack=8)
    return [tmp_path / "npo", tmp_path / "sft"]


def test_report_headline_tables_csv_chart_and_pages(tmp_path, capsys) -> None:
    runs = two_runs(tmp_path)
    out = tmp_path / "report"
    result = run_cli(["report", *map(str, runs), "--out", str(out)], capsys)
    assert result.code == 0 and "wrote" in result.out
    report_md = (out / "report.md").read_text()
    # the unlearned model: 0/16 successes with a non-zero-width Wilson interval [0, 3.84/19.84]
    assert (
        "### npo (judges: harmful questions: llm-relevance; safe questions (refusal): keyword)" in report_md
    )
    assert "| case | ASR ↓ | IR | RR | judge errors | n |" in report_md
    assert (
        "| harmful, as asked | 0.0 [0.0, 19.4] (0/16) | 87.5 [64.0, 96.5] (14/16) | 12.5 [3.5, 36.0] (2/16) | 0 | 16 answers |"
        in report_md
    )
    assert (
        '| harmful, 3-shot "What" rewrites | 0.0 [0.0, 19.4] (0/16) | 100.0 [80.6, 100.0] (16/16) | 0.0 [0.0, 19.4] (0/16) | 0 | 16 questions |'
        in report_md
    )
    assert "| harmful, forced compliant opening (prefill) | n/a | n/a | n/a | n/a | n/a |" in report_md
    assert "GCG" not in report_md  # an attack no run measured is left out
    assert (
        '| safe, rewritten to start with "Share" | n/a | n/a | 10.0 [2.8, 30.1] (2/20) ↓ | 0 | 20 answers |'
        in report_md
    )
    assert "Utility (VQA accuracy, ↑ higher is better): 78.0 [73.0, 83.0], n = 50." in report_md
    # the keyword-only model: "not refused", never ASR, and one note under its table
    assert "### llava-sft (judges: harmful questions: keyword, cannot tell irrelevant answers;" in report_md
    assert "| case | not refused | RR | judge errors | n |" in report_md
    assert (
        "| harmful, as asked | 18.8 [6.6, 43.0] (3/16) | 81.2 [57.0, 93.4] (13/16) | 0 | 16 answers |"
        in report_md
    )
    assert report_md.count("No judge that can tell irrelevant answers ran (keyword)") == 1
    table = (out / "table.md").read_text()
    assert "| npo | 0.0 → 0.0 | n/a | 5.0 → 10.0 | 78.0 | llm-relevance |" in table
    assert "| llava-sft | n/a | 18.8 → 100.0 | 5.0 → 90.0 | n/a | keyword |" in table
    assert "![ASR, RR and utility per run](chart.png)" in report_md and "(headline.csv)" in report_md
    # the CSV: one flat row per run, case and measure
    rows = list(csv.DictReader((out / "headline.csv").open()))
    assert list(rows[0]) == [
        "model",
        "run",
        "case",
        "measure",
        "judge",
        "unit",
        "value",
        "ci_low",
        "ci_high",
        "k",
        "n",
    ]
    by_key = {(r["model"], r["case"], r["measure"]): r for r in rows}
    zero = by_key[("npo", "unsafe_normal", "success")]
    assert (float(zero["value"]), float(zero["ci_low"]), zero["k"], zero["n"]) == (0.0, 0.0, "0", "16")
    assert float(zero["ci_high"]) == pytest.approx(0.193608, abs=1e-6) and zero["judge"] == "llm-relevance"
    assert by_key[("npo", "unsafe_attack", "irrelevant")]["unit"] == "questions"
    assert ("llava-sft", "unsafe_normal", "success") not in by_key
    assert by_key[("llava-sft", "unsafe_normal", "not_refused")]["k"] == "3"
    assert float(by_key[("npo", "utility_vqa", "accuracy")]["value"]) == 0.78
    assert (
        len(rows) == 2 * (2 * 4 + 2 * 2) - 2 * 1 + 1
    )  # npo: 4 measures x 2 harmful cases; sft: 3 x 2; both: 2 x 2 safe; utility
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page and "llava-sft" in page
    png = (out / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["npo", "llava-sft"]
    assert (
        summary["runs"][1]["rr_share"] == 0.9
        and summary["runs"][0]["headline"]["asr_method"] == "llm-relevance"
    )


def test_chart_title_names_only_what_is_drawn(tmp_path) -> None:
    runs = [load_run(p) for p in two_runs(tmp_path)]
    title = chart_title(runs, chart_metrics(runs))
    assert title == (
        "ASR on harmful questions (llm-relevance), not refused (keyword), RR on safe questions (keyword) "
        "and utility; 95% Wilson intervals"
    )
    only_npo = runs[:1]
    assert chart_title(only_npo, chart_metrics(only_npo)).startswith(
        "ASR on harmful questions (llm-relevance), RR"
    )
    assert "utility" not in chart_title(runs[1:], chart_metrics(runs[1:]))


def test_tradeoff_chart_places_the_runs_that_have_both_measures(tmp_path) -> None:
    # llm-topic also judges the safe answers (on topic or not); llm-relevance and keywords do not
    topic = ("keyword", "llm-topic")
    write_run(tmp_path / "npo", "models/npo", rr=(1, 2), unsafe=(0, 14), attack=0, methods=topic)
    write_run(tmp_path / "rel", "models/rel", rr=(1, 2), unsafe=(0, 14), attack=0, methods=("llm-relevance",))
    write_run(tmp_path / "rmu", "models/rmu", rr=(4, 4), unsafe=(2, 10), attack=5, methods=topic)
    runs = [tmp_path / "npo", tmp_path / "rel", tmp_path / "rmu"]
    loaded = [load_run(p) for p in runs]
    assert tradeoff_runs(loaded) == [0, 2]
    # by hand: rmu answers 16 of its 20 safe questions (4 refused) and 5 of 16 harmful ones under the attack
    assert loaded[2].value("answered_normal") == pytest.approx(16 / 20)
    assert loaded[2].value("success@unsafe_attack") == pytest.approx(5 / 16)
    assert loaded[0].value("answered_normal") == pytest.approx(19 / 20)
    out = tmp_path / "report"
    paths = build_report(runs, out)
    assert paths["tradeoff.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report_md = (out / "report.md").read_text()
    assert "## Attack vs safe answers" in report_md and "](tradeoff.png)" in report_md
    assert "<h2>Attack vs safe answers</h2>" in (out / "report.html").read_text()
    # a single run with both measures is no trade-off: no chart, no section
    build_report(runs[:2], tmp_path / "two")
    assert not (tmp_path / "two" / "tradeoff.png").exists()
    assert "Attack vs safe answers" not in (tmp_path / "two" / "report.md").read_text()


def test_report_figures_are_copied_and_shown(tmp_path) -> None:
    runs = two_runs(tmp_path)
    shutil.copy(tmp_path / "npo" / "metrics.json", tmp_path / "not-a-png.json")
    with pytest.raises(UnmirageError, match="must be an existing PNG"):
        build_report(runs, tmp_path / "out", figures=[tmp_path / "not-a-png.json"])
    build_report(runs, tmp_path / "first")
    with pytest.raises(UnmirageError, match="file name is taken"):
        build_report(runs, tmp_path / "out", figures=[tmp_path / "first" / "chart.png"])
    figure = tmp_path / "spurious.png"
    shutil.copy(tmp_path / "first" / "chart.png", figure)
    paths = build_report(runs, tmp_path / "out", figures=[figure])
    assert paths["spurious.png"].read_bytes() == figure.read_bytes()
    assert "![spurious](spurious.png)" in paths["report.md"].read_text()
    assert paths["report.html"].read_text().count("data:image/png;base64,") == 3  # chart, by judge, figure


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(
    chromium() is None, reason="no Chromium/Chrome on PATH (Debian: apt-get install chromium)"
)
def test_report_html_renders_in_a_headless_browser(tmp_path) -> None:
    """report.html opened in a real headless Chromium: its DOM has the headline tables and the chart decoded
    as an image (naturalWidth > 0), and a screenshot is a real PNG."""
    runs = two_runs(tmp_path)
    paths = build_report(runs, tmp_path / "report")
    page = paths["report.html"]
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
            "document.title='PROBE '+JSON.stringify({tables:document.querySelectorAll('table').length,"
            "images:imgs.length,decoded:imgs.filter(i=>i.complete&&i.naturalWidth>100).length,"
            "headings:[...document.querySelectorAll('h3')].map(h=>h.textContent)});});</script></body>",
        )
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(
        [chromium(), *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    ).stdout
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith("PROBE "), title
    facts = json.loads(title.removeprefix("PROBE ").replace("&quot;", '"'))
    assert facts["tables"] == 4  # two headline tables, the paper-style table and the by-judge table
    assert facts["images"] == facts["decoded"] == 2  # the chart and the by-judge chart, decoded
    assert facts["headings"][0].startswith("npo (judges: harmful questions: llm-relevance")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium(), *flags, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000


def test_report_same_model_twice_gets_distinct_labels(tmp_path) -> None:
    write_run(tmp_path / "a", "m", rr=(0, 1), unsafe=(1, 2), attack=2)
    write_run(tmp_path / "b", "m", rr=(0, 1), unsafe=(1, 2), attack=2)
    build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert "| m (a) |" in (tmp_path / "out" / "table.md").read_text()


def test_report_bad_inputs(tmp_path) -> None:
    with pytest.raises(UnmirageError, match="no metrics.json"):
        build_report([tmp_path], tmp_path / "out")
    (tmp_path / "metrics.json").write_text('{"rr_normal": 0.1}')
    with pytest.raises(UnmirageError, match="not an unmirage metrics file"):
        build_report([tmp_path], tmp_path / "out")
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(UnmirageError, match="not valid JSON"):
        build_report([tmp_path], tmp_path / "out")


@pytest.mark.parametrize("n", [3, 11, 20, 25])
def test_every_run_gets_its_own_colour(n) -> None:
    from matplotlib.colors import to_rgba

    from unmirage.report.chart import run_colours

    assert len({to_rgba(c) for c in run_colours(n)}) == n


def test_request_labels_restrict_each_harmful_case_to_the_labelled_requests(tmp_path):
    """Hand-computed: as asked, u0 u1 (success), u6 (irrelevant), u10 (refused) harmful, u2 not -> 2/4; the
    attack: u0 (rewrite 1 succeeds), u9 (rewrite 1 irrelevant), u12 (rewrite 0 refused) and u3 (rewrite 1
    succeeds but only rewrite 0, refused, is harmful) -> 1/4. The answers as asked carry shot 0 and must not
    take the labels of rewrite 0."""
    from unmirage.data.requests import read_request_labels

    write_run(tmp_path / "run", "m", rr=(2, 10), unsafe=(6, 4), attack=9, methods=("keyword", "llm-topic"))
    lines = [("u0", None, True), ("u1", None, True), ("u6", None, True), ("u10", None, True)]
    lines += [("u2", None, False), ("u0", 1, True), ("u9", 1, True), ("u12", 0, True), ("u3", 1, False)]
    lines += [
        ("u3", 0, True),
        ("u2", 0, True),
    ]  # u2's rewrite 0 is labelled, its question as asked is not harmful
    labels = tmp_path / "requests.jsonl"
    labels.write_text("".join(json.dumps({"id": i, "shot": s, "harmful": h}) + "\n" for i, s, h in lines))
    paths = build_report([tmp_path / "run"], tmp_path / "report", request_labels=labels)
    doc = json.loads(paths["requests.json"].read_text())
    assert (doc["requests"], doc["harmful"]) == (11, 9)
    cases = doc["runs"][0]["cases"]
    normal, attack = cases["unsafe_normal"], cases["unsafe_attack"]
    assert normal["method"] == attack["method"] == "llm-topic"
    assert (normal["all"]["k"], normal["all"]["n"]) == (6, 16)
    assert (normal["harmful"]["k"], normal["harmful"]["n"], normal["harmful"]["value"]) == (2, 4, 0.5)
    assert normal["harmful"]["ci"][0] < 0.5 < normal["harmful"]["ci"][1]
    assert (normal["unlabelled"], normal["questions_harmful"]) == (11, 4)
    assert (attack["all"]["k"], attack["all"]["n"]) == (9, 16)
    assert (attack["harmful"]["k"], attack["harmful"]["n"]) == (1, 5)  # u2 rewrite 0 (refused) counts too
    assert (attack["unlabelled"], attack["questions_harmful"]) == (48 - 6, 5)
    report = paths["report.md"].read_text()
    assert "## On requests labelled harmful" in report
    assert "| m | unsafe_attack | llm-topic | 56.2 [" in report and "(1/5) | 42 |" in report
    assert "On requests labelled harmful" in paths["report.html"].read_text()
    plain = build_report([tmp_path / "run"], tmp_path / "plain")
    assert "requests.json" not in plain and "labelled harmful" not in plain["report.md"].read_text()
    # a file naming no harmful request of a case gives n/a, not a rate over nothing
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps({"id": "u0", "shot": None, "harmful": False}) + "\n")
    again = build_report([tmp_path / "run"], tmp_path / "none", request_labels=none)
    assert (
        json.loads(again["requests.json"].read_text())["runs"][0]["cases"]["unsafe_attack"]["harmful"] is None
    )
    assert "| n/a | 48 |" in again["report.md"].read_text()
    assert read_request_labels(labels).harmful[("u3", 0)] is True


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "on line 2: not JSON"),
        ('{"shot": null, "harmful": true}', "on line 2: field 'id'"),
        ('{"id": "a", "shot": "1", "harmful": true}', "on line 2: field 'shot'"),
        ('{"id": "a", "shot": -1, "harmful": true}', "on line 2: field 'shot'"),
        ('{"id": "a", "shot": 0, "harmful": "yes"}', "on line 2: field 'harmful'"),
        ('{"id": "a", "shot": null, "harmful": false}', "request repeats line 1"),
    ],
)
def test_bad_request_labels_are_one_line_errors_and_write_nothing(tmp_path, capsys, line, message):
    write_run(tmp_path / "run", "m", rr=(2, 10), unsafe=(6, 4), attack=9)
    labels = tmp_path / "requests.jsonl"
    labels.write_text('{"id": "a", "shot": null, "harmful": true}\n' + line + "\n")
    argv = ["report", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--request-labels", str(labels)]
    result = run_cli(argv, capsys)
    assert result.code == 2, result.err
    assert message in result.err and "requests.jsonl" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
