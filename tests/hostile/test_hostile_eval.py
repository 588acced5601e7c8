"""Hostile cases for `eval`: folders it did not write, another model's run, kill -9 at every stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import ScriptedServer, cli_status, run_cli
from hostile import FAST_DECODING, assert_untouched, refused, run_killed, snapshot
from test_eval import vlguard_files

KILL_POINTS = {
    "generation": ("unmirage.runs:JsonlAppender.write_many", 2, "after"),
    "judging": ("unmirage.judges:run_judge", 3, "before"),
    "metrics": ("unmirage.eval:build_metrics", 1, "before"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return vlguard_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def whole(models, files, tmp_path_factory) -> dict:
    """metrics.json of an uninterrupted run of model A."""
    run = tmp_path_factory.mktemp("whole") / "run"
    assert cli_status(argv(models["A"], files, run)) == 0
    return stable(run / "metrics.json")


def argv(model: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    paths = ["--vlguard-test", str(files["test"]), "--what", str(files["what"])]
    paths += ["--image-root", str(files["images"]), "--out", str(out)]
    return ["eval", "--model", str(model), *paths, *FAST_DECODING, "--bootstrap", "50", *extra]


def stable(metrics_path: Path) -> dict:
    """metrics.json without the throughput numbers (time-dependent)."""
    metrics = json.loads(metrics_path.read_text())
    return {k: v for k, v in metrics.items() if not k.startswith("generation_")}


@pytest.mark.refuse
def test_other_model_into_an_eval_folder_is_refused(models, files, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert run_cli(argv(models["A"], files, run), capsys).code == 0
    before = snapshot(run)
    refused(run_cli(argv(models["B"], files, run), capsys), "other settings", "model.path")
    assert_untouched(before)
    assert json.loads((run / "metrics.json").read_text())["model"] == str(models["A"])


@pytest.mark.refuse
@pytest.mark.parametrize(("option", "value"), [("--max-new-tokens", "5"), ("--prefill", "Sure")])
def test_changed_generation_settings_are_refused(models, files, tmp_path, capsys, option, value) -> None:
    run = tmp_path / "run"
    assert run_cli(argv(models["A"], files, run), capsys).code == 0
    before = snapshot(run)
    refused(run_cli([*argv(models["A"], files, run), option, value], capsys), "other settings")
    assert_untouched(before)


@pytest.mark.survive
def test_rerun_with_the_same_settings_resumes(models, files, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert run_cli(argv(models["A"], files, run), capsys).code == 0
    first = stable(run / "metrics.json")
    assert run_cli([*argv(models["A"], files, run), "--label", "renamed"], capsys).code == 0
    assert {k: v for k, v in stable(run / "metrics.json").items() if k != "label"} == {
        k: v for k, v in first.items() if k != "label"
    }


@pytest.mark.survive
def test_overwrite_replaces_another_models_run(models, files, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert run_cli(argv(models["A"], files, run), capsys).code == 0
    assert run_cli([*argv(models["B"], files, run), "--overwrite"], capsys).code == 0
    assert json.loads((run / "metrics.json").read_text())["model"] == str(models["B"])
    rows = [json.loads(x) for x in (run / "generations" / "unsafe_normal.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {str(models["B"])}


@pytest.mark.refuse
@pytest.mark.parametrize("overwrite", [False, True])
def test_folder_of_other_files_is_refused(models, files, tmp_path, capsys, overwrite) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(mine)
    extra = ["--overwrite"] if overwrite else []
    refused(run_cli([*argv(models["A"], files, mine), *extra], capsys), "unmirage did not write")
    assert_untouched(before)


@pytest.mark.refuse
def test_folder_of_another_command_is_refused(models, files, tmp_path, capsys) -> None:
    from unmirage.runs import write_manifest

    built = tmp_path / "built"
    built.mkdir()
    (built / "forget.json").write_text("[]")
    write_manifest(built, command="data build-unlearn")
    before = snapshot(built)
    refused(run_cli(argv(models["A"], files, built), capsys), "unmirage data build-unlearn")
    assert_untouched(before)


@pytest.mark.refuse
def test_output_folder_that_is_a_file_is_refused(models, files, tmp_path, capsys) -> None:
    target = tmp_path / "run"
    target.write_text("a file")
    before = snapshot(target)
    refused(run_cli(argv(models["A"], files, target), capsys), "is a file")
    assert_untouched(before)


@pytest.mark.survive
@pytest.mark.parametrize("stage", sorted(KILL_POINTS))
def test_kill_9_resumes_to_identical_metrics(models, files, whole, tmp_path, stage) -> None:
    killed = tmp_path / "killed"
    target, nth, when = KILL_POINTS[stage]
    child = run_killed(target, nth, when, argv(models["A"], files, killed), tmp_path)
    assert child.returncode == -9, child.stderr[-2000:]
    assert not (killed / "metrics.json").exists()
    assert cli_status(argv(models["A"], files, killed)) == 0
    assert stable(killed / "metrics.json") == whole


@pytest.mark.refuse
def test_kill_9_then_another_model_is_refused(models, files, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    target, nth, when = KILL_POINTS["generation"]
    assert run_killed(target, nth, when, argv(models["A"], files, run), tmp_path).returncode == -9
    before = snapshot(run)
    refused(run_cli(argv(models["B"], files, run), capsys), "model.path")
    assert_untouched(before)


@pytest.mark.refuse
def test_unset_api_key_variable_is_an_error(models, files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    extra = ["--judge", "llm-relevance", "--judge-model", "m", "--judge-url", "http://127.0.0.1:9/v1"]
    result = run_cli(
        [*argv(models["A"], files, tmp_path / "run"), *extra, "--judge-api-key-env", "MY_JUDGE_KEY"], capsys
    )
    refused(result, "MY_JUDGE_KEY is not set")
    assert not (tmp_path / "run").exists()


@pytest.mark.survive
def test_credentials_in_the_judge_url_stay_out_of_the_manifest(models, files, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    with ScriptedServer([], reply="Relevant: yes") as server:
        url = server.url.replace("http://", "http://alice:s3cret@") + "?api_key=k3y"
        extra = ["--judge", "llm-relevance", "--judge-model", "m", "--judge-url", url]
        result = run_cli([*argv(models["A"], files, run), *extra], capsys)
    assert result.code == 0, result.err
    for name in ("manifest.json", "metrics.json"):
        text = (run / name).read_text()
        assert "s3cret" not in text and "k3y" not in text and "alice" not in text, name
    assert "***@" in (run / "manifest.json").read_text()
