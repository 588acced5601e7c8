"""Hostile cases for `generate` and `judge`: outputs they did not write, other models, inputs as outputs,
kill -9 and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import cli_status, png, run_cli, safe_record, unsafe_record, write_json
from hostile import FAST_DECODING, assert_untouched, refused, run_killed, snapshot


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    root = tmp_path / "images"
    png(root / "a/1.png", size=(24, 20))
    for i in range(1, 7):
        png(root / f"b/{i}.png", size=(24, 20), color=(30 * i, 90, 200))
    records = [safe_record("s1", "a/1.png")] + [unsafe_record(f"u{i}", f"b/{i}.png") for i in range(1, 7)]
    return {"root": root, "test": write_json(tmp_path / "test.json", records)}


def argv(model: Path, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    paths = ["--data", str(data["test"]), "--image-root", str(data["root"]), "--out", str(out)]
    return ["generate", "--model", str(model), *paths, *FAST_DECODING, *extra]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.refuse
def test_other_model_into_a_started_file_is_refused(models, data, tmp_path, capsys) -> None:
    out = tmp_path / "gens.jsonl"
    assert run_cli(argv(models["A"], data, out), capsys).code == 0
    before = snapshot(out, tmp_path / "gens.manifest.json")
    refused(run_cli(argv(models["B"], data, out), capsys), "other settings", "model.path")
    assert_untouched(before)
    assert {r["model"] for r in lines(out)} == {str(models["A"])}


@pytest.mark.refuse
@pytest.mark.parametrize(
    ("option", "value", "key"),
    [
        ("--max-new-tokens", "4", "max_new_tokens"),
        ("--template", "chat", "template"),
        ("--assistant-prefix", "Sure", "assistant_prefix"),
        ("--subset", "safe_safes", "subset"),
    ],
)
def test_changed_settings_on_resume_are_refused(models, data, tmp_path, capsys, option, value, key) -> None:
    out = tmp_path / "gens.jsonl"
    assert run_cli(argv(models["A"], data, out, "--limit", "2"), capsys).code == 0
    before = snapshot(tmp_path)
    refused(run_cli([*argv(models["A"], data, out), option, value], capsys), key)
    assert_untouched(before)


@pytest.mark.refuse
def test_changed_data_file_on_resume_is_refused(models, data, tmp_path, capsys) -> None:
    out = tmp_path / "gens.jsonl"
    assert run_cli(argv(models["A"], data, out, "--limit", "1"), capsys).code == 0
    records = json.loads(data["test"].read_text())
    records[1]["instr-resp"][0]["instruction"] = "Another question?"
    data["test"].write_text(json.dumps(records))
    before = snapshot(out)
    refused(run_cli(argv(models["A"], data, out), capsys), "data: was")
    assert_untouched(before)


@pytest.mark.survive
def test_other_model_with_overwrite_replaces_the_file(models, data, tmp_path, capsys) -> None:
    out = tmp_path / "gens.jsonl"
    assert run_cli(argv(models["A"], data, out), capsys).code == 0
    assert run_cli([*argv(models["B"], data, out), "--overwrite"], capsys).code == 0
    assert {r["model"] for r in lines(out)} == {str(models["B"])} and len(lines(out)) == 6
    manifest = json.loads((tmp_path / "gens.manifest.json").read_text())
    assert manifest["identity"]["model"]["path"] == str(models["B"])


@pytest.mark.refuse
def test_input_file_as_output_is_refused(models, data, capsys) -> None:
    before = snapshot(data["test"])
    refused(run_cli(argv(models["A"], data, data["test"]), capsys), "is also an input")
    refused(run_cli([*argv(models["A"], data, data["test"]), "--overwrite"], capsys), "is also an input")
    assert_untouched(before)


@pytest.mark.refuse
def test_unrelated_file_as_output_is_refused(models, data, tmp_path, capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("line one\nline two\nline three\n")
    before = snapshot(notes)
    refused(run_cli(argv(models["A"], data, notes), capsys), "not written by unmirage")
    assert_untouched(before)
    assert not (tmp_path / "notes.manifest.json").exists()


@pytest.mark.refuse
def test_folder_as_output_file_is_refused(models, data, tmp_path, capsys) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "keep.txt").write_text("keep")
    before = snapshot(tmp_path / "dir")
    refused(run_cli(argv(models["A"], data, tmp_path / "dir"), capsys), "is a folder")
    assert_untouched(before)


@pytest.mark.refuse
def test_foreign_jsonl_with_a_torn_middle_is_not_truncated(tmp_path) -> None:
    from unmirage.errors import UnmirageError
    from unmirage.runs import read_jsonl_resumable

    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    before = snapshot(path)
    with pytest.raises(UnmirageError, match="line 2 is not a JSON object"):
        read_jsonl_resumable(path)
    assert_untouched(before)


@pytest.mark.survive
def test_kill_9_between_batches_resumes_to_identical_lines(models, data, tmp_path) -> None:
    whole, killed = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"
    assert cli_status(argv(models["A"], data, whole)) == 0
    child = run_killed(
        "unmirage.runs:JsonlAppender.write_many", 2, "after", argv(models["A"], data, killed), tmp_path
    )
    assert child.returncode == -9, child.stderr
    assert len(lines(killed)) == 4  # two batches of two
    assert cli_status(argv(models["A"], data, killed)) == 0
    assert killed.read_bytes() == whole.read_bytes()


@pytest.mark.refuse
def test_kill_9_then_resume_with_another_model_is_refused(models, data, tmp_path, capsys) -> None:
    out = tmp_path / "gens.jsonl"
    child = run_killed(
        "unmirage.runs:JsonlAppender.write_many", 1, "after", argv(models["A"], data, out), tmp_path
    )
    assert child.returncode == -9
    before = snapshot(out)
    refused(run_cli(argv(models["B"], data, out), capsys), "model.path")
    assert_untouched(before)


@pytest.mark.refuse
def test_truncated_jpeg_is_refused_before_any_output(models, data, tmp_path, capsys) -> None:
    from PIL import Image

    image = data["root"] / "b/3.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "full.jpg", format="JPEG")
    image.write_bytes((tmp_path / "full.jpg").read_bytes()[:400])
    out = tmp_path / "gens.jsonl"
    refused(run_cli(argv(models["A"], data, out), capsys), "b/3.png", "record id u3", "corrupt")
    assert not out.exists()
    result = run_cli(["data", "check", str(data["test"]), "--image-root", str(data["root"])], capsys)
    refused(result, "b/3.png", "record id u3")


@pytest.mark.refuse
@pytest.mark.parametrize(
    ("text", "message"),
    [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ('[{"id": NaN}]', "NaN is not a JSON number")],
)
def test_hostile_json_data_is_one_line_error(models, data, tmp_path, capsys, text, message) -> None:
    data["test"].write_text(text)
    out = tmp_path / "gens.jsonl"
    refused(run_cli(argv(models["A"], data, out), capsys), message)
    assert not out.exists()


@pytest.mark.refuse
def test_missing_local_model_folder(data, tmp_path, capsys) -> None:
    out = tmp_path / "gens.jsonl"
    refused(run_cli(argv(tmp_path / "no" / "such" / "model", data, out), capsys), "model folder not found")
    assert not out.exists()


# ----- judge ---------------------------------------------------------------------------------------------------


def answers(tmp_path: Path) -> Path:
    rows = [
        {"id": f"u{i}", "question": "How?", "answer": "I'm sorry." if i % 2 else "Sure."} for i in range(3)
    ]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.refuse
def test_judge_output_onto_its_answers_is_refused(tmp_path, capsys) -> None:
    path = answers(tmp_path)
    before = snapshot(path)
    refused(
        run_cli(["judge", "keyword", "--answers", str(path), "--out", str(path)], capsys), "is also an input"
    )
    assert_untouched(before)


@pytest.mark.refuse
def test_judge_onto_an_unrelated_file_is_refused(tmp_path, capsys) -> None:
    path = answers(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    before = snapshot(notes)
    refused(run_cli(["judge", "keyword", "--answers", str(path), "--out", str(notes)], capsys), "not written")
    assert_untouched(before)


@pytest.mark.refuse
def test_judge_other_answers_into_a_judged_file_is_refused(tmp_path, capsys) -> None:
    path = answers(tmp_path)
    out = tmp_path / "judged.jsonl"
    assert run_cli(["judge", "keyword", "--answers", str(path), "--out", str(out)], capsys).code == 0
    assert run_cli(["judge", "keyword", "--answers", str(path), "--out", str(out)], capsys).code == 0
    other = shutil.copy(path, tmp_path / "other.jsonl")
    Path(other).write_text(Path(other).read_text().replace("Sure.", "Fine."))
    before = snapshot(out)
    refused(run_cli(["judge", "keyword", "--answers", str(other), "--out", str(out)], capsys), "answers: was")
    assert_untouched(before)
    assert (
        run_cli(["judge", "keyword", "--answers", str(other), "--out", str(out), "--overwrite"], capsys).code
        == 0
    )
