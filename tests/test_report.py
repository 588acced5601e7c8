"""`unmirage report`: table, chart, report.md and report.html from metrics.json files; VQA utility scoring."""

from __future__ import annotations

import json

import pytest

from unmirage.cli.main import main as cli_main
from unmirage.errors import UnmirageError
from unmirage.metrics import Bootstrap, build_metrics
from unmirage.report import build_report
from unmirage.runs import atomic_write_json
from unmirage.utility import load_vqa, normalise_vqa, parse_choice, score_vqa, vqa_soft_accuracy


def judged(qid: str, refused: bool, shot: int | None = None) -> dict:
    record = {"id": qid, "judgements": {"keyword": {"refused": refused, "success": not refused}}}
    if shot is not None:
        record["shot"] = shot
    return record


def write_run(
    folder, model: str, rr: tuple[int, int], asr: tuple[int, int], utility: float | None = None
) -> None:
    safe = [judged(f"s{i}", i < rr[0]) for i in range(20)]
    share = [judged(f"s{i}", i < rr[1]) for i in range(20)]
    unsafe = [judged(f"u{i}", i >= asr[0]) for i in range(10)]
    attack = [judged(f"u{i}", not (i < asr[1] and s == 1), shot=s) for i in range(10) for s in range(3)]
    doc = build_metrics(
        {"safe_normal": safe, "safe_share": share, "unsafe_normal": unsafe, "unsafe_attack": attack},
        boot=Bootstrap(samples=200),
        model=model,
    )
    if utility is not None:
        doc["utility"] = {
            "vqa": {"accuracy": {"value": utility, "ci": [utility - 0.05, utility + 0.05], "n": 50}}
        }
    atomic_write_json(folder / "metrics.json", doc)


def test_report_table_chart_and_pages(tmp_path, capsys) -> None:
    write_run(tmp_path / "base", "models/llava-base", rr=(1, 2), asr=(6, 9), utility=0.78)
    write_run(tmp_path / "sft", "models/llava-sft", rr=(1, 18), asr=(0, 5))
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["report", str(tmp_path / "base"), str(tmp_path / "sft"), "--out", str(out)])
    assert exit_.value.code == 0
    assert "wrote" in capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert "| llava-base | 60.00 → 90.00 | 5.00 → 10.00 | 78.00 |" in table
    assert "| llava-sft | 0.00 → 50.00 | 5.00 → 90.00 | - |" in table
    report_md = (out / "report.md").read_text()
    assert "![ASR, RR and utility per run](chart.png)" in report_md and "[" in report_md
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page and "llava-sft" in page
    png = (out / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["llava-base", "llava-sft"]
    assert summary["runs"][1]["rr_share"] == 0.9


def test_report_same_model_twice_gets_distinct_labels(tmp_path) -> None:
    write_run(tmp_path / "a", "m", rr=(0, 1), asr=(1, 2))
    write_run(tmp_path / "b", "m", rr=(0, 1), asr=(1, 2))
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


# ----- utility --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", 1),
        ("(C)", 2),
        ("A.", 0),
        ("B) a cat", 1),
        ("The answer is C.", 2),
        ("Answer: A", 0),
        ("a cat", 1),
        ("A dog sits there", 0),
        ("D", None),
        ("I am not sure", None),
        ("", None),
    ],
)
def test_parse_choice(answer: str, expected: int | None) -> None:
    assert parse_choice(answer, ["a dog", "a cat", "the moon"]) == expected


def test_vqa_soft_accuracy_and_normalisation() -> None:
    assert normalise_vqa("Two dogs!") == "2 dogs"
    assert normalise_vqa("The 1,000 men.") == "1000 men"
    assert normalise_vqa("dont") == normalise_vqa("don't") == "don't"
    assert vqa_soft_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_soft_accuracy("no", ["yes"] * 10) == 0.0
    # 3 of 10 humans agree: 7 leave-one-out subsets keep 3 matches (1.0), 3 keep 2 (2/3)
    assert vqa_soft_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx((7 * 1 + 3 * 2 / 3) / 10)
    assert vqa_soft_accuracy("Red.", ["red"]) == 1.0


def test_load_and_score_vqa(tmp_path) -> None:
    rows = [
        {"id": 1, "image": "a.png", "question": "What is it?", "choices": ["dog", "cat"], "answer": 1},
        {"id": "q2", "question": "Which?", "choices": ["x", "y", "z"], "answer": "C"},
        {"id": "q3", "image": "b.png", "question": "How many?", "answers": ["2"] * 10},
    ]
    (tmp_path / "vqa.json").write_text(json.dumps(rows))
    items = load_vqa(tmp_path / "vqa.json")
    assert [i.kind for i in items] == ["multiple_choice", "multiple_choice", "short_answer"]
    assert items[1].answer == 2 and "C. z" in items[1].prompt() and "single word" in items[2].prompt()
    result = score_vqa(items, {"1": "B", "q2": "I don't know", "q3": "two"}, boot=Bootstrap(samples=100))
    assert result["accuracy"]["value"] == pytest.approx(2 / 3)
    assert result["multiple_choice"]["value"] == 0.5 and result["short_answer"]["value"] == 1.0
    assert result["unparsed"] == 1
    with pytest.raises(UnmirageError, match="no answer"):
        score_vqa(items, {"1": "B"})


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": "a", "question": "q"}], "either 'choices'"),
        ([{"id": "a", "question": "q", "choices": ["x", "y"], "answer": 5}], "not one of the 2 choices"),
        ([{"id": "a", "question": "q", "answers": []}], "field 'answers'"),
        (
            [{"id": "a", "question": "q", "answers": ["x"]}, {"id": "a", "question": "q", "answers": ["x"]}],
            "duplicate id",
        ),
        ([{"question": "q", "answers": ["x"]}], "field 'id'"),
        ([], "non-empty"),
    ],
)
def test_vqa_file_errors(tmp_path, rows: list, message: str) -> None:
    (tmp_path / "vqa.json").write_text(json.dumps(rows))
    with pytest.raises(UnmirageError, match=message):
        load_vqa(tmp_path / "vqa.json")


@pytest.mark.parametrize("n", [3, 11, 20, 25])
def test_every_run_gets_its_own_colour(n) -> None:
    from matplotlib.colors import to_rgba

    from unmirage.report.chart import run_colours

    assert len({to_rgba(c) for c in run_colours(n)}) == n
