"""Hostile cases for `unmirage report` and `unmirage lab run`: outputs of other runs or settings, folders of
other files, runs as outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli
from hostile import assert_untouched, refused, snapshot
from unmirage.metrics import build_metrics
from unmirage.outputs import claim_folder
from unmirage.runs import atomic_write_json


def write_run(folder: Path, model: str) -> Path:
    """A small evaluation run: two harmful questions judged by keywords (one refused), two safe ones."""
    verdict = {"keyword": {"refused": False, "success": True}}
    refused_verdict = {"keyword": {"refused": True, "success": False}}
    records = {
        "safe_normal": [{"id": "s1", "judgements": verdict}, {"id": "s2", "judgements": refused_verdict}],
        "unsafe_normal": [{"id": "u1", "judgements": verdict}, {"id": "u2", "judgements": refused_verdict}],
    }
    atomic_write_json(folder / "metrics.json", build_metrics(records, asr_methods=("keyword",), model=model))
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [write_run(tmp_path / "a", "models/a"), write_run(tmp_path / "b", "models/b")]


def report(runs: list[Path], out: Path, *extra: str) -> list[str]:
    return ["report", *map(str, runs), "--out", str(out), *extra]


@pytest.mark.survive
def test_report_of_the_same_runs_is_rebuilt_in_place(runs, tmp_path, capsys) -> None:
    out = tmp_path / "report"
    assert run_cli(report(runs, out), capsys).code == 0
    first = (out / "report.md").read_text()
    assert run_cli(report(runs, out), capsys).code == 0
    assert (out / "report.md").read_text() == first
    assert json.loads((out / "manifest.json").read_text())["command"] == "report"


@pytest.mark.refuse
def test_report_of_other_runs_needs_overwrite(runs, tmp_path, capsys) -> None:
    out = tmp_path / "report"
    assert run_cli(report(runs, out), capsys).code == 0
    before = snapshot(out)
    refused(run_cli(report(runs[:1], out), capsys), "other settings", "--overwrite")
    assert_untouched(before)
    assert run_cli(report(runs[:1], out, "--overwrite"), capsys).code == 0
    assert "models/b" not in (out / "summary.json").read_text()


@pytest.mark.refuse
@pytest.mark.parametrize("overwrite", [False, True])
def test_report_into_a_folder_of_other_files(runs, tmp_path, capsys, overwrite) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    before = snapshot(out)
    refused(run_cli(report(runs, out, *(["--overwrite"] if overwrite else [])), capsys), "did not write")
    assert_untouched(before)


@pytest.mark.refuse
def test_report_into_one_of_its_runs(runs, capsys) -> None:
    before = snapshot(runs[0])
    refused(run_cli(report(runs, runs[0]), capsys), "input")
    assert_untouched(before)


@pytest.mark.refuse
@pytest.mark.parametrize("overwrite", [False, True])
def test_lab_run_into_a_folder_of_other_files(tmp_path, capsys, overwrite) -> None:
    out = tmp_path / "project"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train.json").write_text("[]")
    (out / "recipes").mkdir()
    (out / "recipes" / "mine.yaml").write_text("model: mine")
    before = snapshot(out)
    command = ["lab", "run", "--quick", "--quiet", "--out", str(out), *(["--overwrite"] if overwrite else [])]
    refused(run_cli(command, capsys), "did not write")
    assert_untouched(before)


@pytest.mark.refuse
def test_lab_run_over_a_lab_run_with_other_settings_needs_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "lab"
    claim_folder(out, command="lab run", identity={"config": {"world": "another"}, "seeds": [0]})
    (out / "miragelab.md").write_text("an earlier lab run's report")
    before = snapshot(out)
    refused(
        run_cli(["lab", "run", "--quick", "--quiet", "--out", str(out)], capsys),
        "other settings",
        "--overwrite",
    )
    assert_untouched(before)
