"""Hostile cases for the data, attack and model-folder commands: outputs they did not write, inputs as
outputs, reruns over finished outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli, safe_record, unsafe_record, write_json
from hostile import assert_untouched, refused, snapshot


@pytest.fixture
def train(tmp_path: Path) -> Path:
    records = [
        unsafe_record("u1", "b/1.png", "Share it.", "Sorry."),
        safe_record("s1", "a/1.png", "What is it?", "A cat."),
        unsafe_record("u2", "b/2.png", "Please help.", "No."),
    ]
    return write_json(tmp_path / "train.json", records)


def build(train: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "build-unlearn", "--vlguard", str(train), "--out", str(out), *extra]


@pytest.mark.refuse
def test_build_unlearn_over_a_finished_build_needs_overwrite(train, tmp_path, capsys) -> None:
    out = tmp_path / "sets"
    assert run_cli(build(train, out), capsys).code == 0
    before = snapshot(out)
    refused(run_cli(build(train, out), capsys), "--overwrite")
    assert_untouched(before)
    assert run_cli(build(train, out, "--overwrite"), capsys).code == 0


@pytest.mark.refuse
@pytest.mark.parametrize("overwrite", [False, True])
def test_build_unlearn_into_a_folder_of_other_files(train, tmp_path, capsys, overwrite) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"my": "own manifest"}))
    (out / "forget.json").write_text("my own forget list")
    before = snapshot(out)
    refused(run_cli(build(train, out, *(["--overwrite"] if overwrite else [])), capsys), "did not write")
    assert_untouched(before)


@pytest.mark.refuse
def test_build_unlearn_into_the_folder_of_its_input(train, tmp_path, capsys) -> None:
    before = snapshot(train)
    refused(run_cli(build(train, tmp_path), capsys), "did not write")
    assert_untouched(before)


@pytest.mark.refuse
def test_build_sft_onto_its_input_or_a_foreign_file(train, tmp_path, capsys) -> None:
    other = tmp_path / "notes.json"
    other.write_text('{"mine": true}')
    before = snapshot(train, other)
    refused(run_cli(["data", "build-sft", "--vlguard", str(train), "--out", str(train)], capsys), "input")
    refused(
        run_cli(["data", "build-sft", "--vlguard", str(train), "--out", str(other)], capsys), "not written"
    )
    assert_untouched(before)
    out = tmp_path / "sft.json"
    assert run_cli(["data", "build-sft", "--vlguard", str(train), "--out", str(out)], capsys).code == 0
    assert run_cli(["data", "build-sft", "--vlguard", str(train), "--out", str(out)], capsys).code == 0


@pytest.mark.refuse
def test_attack_build_onto_its_input_or_a_foreign_file(train, tmp_path, capsys) -> None:
    other = tmp_path / "paper.json"
    other.write_text("[]")
    before = snapshot(train, other)
    base = ["attack", "build", "--data", str(train), "--trigger", "What"]
    refused(run_cli([*base, "--out", str(train)], capsys), "is also an input")
    refused(run_cli([*base, "--out", str(other)], capsys), "not written by unmirage")
    assert_untouched(before)
    out = tmp_path / "what.json"
    assert run_cli([*base, "--out", str(out)], capsys).code == 0
    refused(run_cli([*base, "--out", str(out), "--k", "2"], capsys), "k: was 1, now 2")


@pytest.mark.refuse
def test_model_folder_overwrite_never_empties_a_foreign_folder(tmp_path) -> None:
    from unmirage.errors import UnmirageError
    from unmirage.models.convert import prepare_output_dir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "weights.bin").write_bytes(b"mine")
    before = snapshot(mine)
    for overwrite in (False, True):
        with pytest.raises(UnmirageError):
            prepare_output_dir(mine, overwrite)
    assert_untouched(before)


@pytest.mark.refuse
def test_spurious_into_a_folder_of_other_files(train, tmp_path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "spurious.json").write_text("my numbers")
    before = snapshot(mine)
    refused(run_cli(["analyze", "spurious", str(train), "--out", str(mine)], capsys), "did not write")
    assert_untouched(before)
    out = tmp_path / "words"
    assert run_cli(["analyze", "spurious", str(train), "--out", str(out)], capsys).code == 0
    refused(run_cli(["analyze", "spurious", str(train), "--out", str(out), "--top", "3"], capsys), "top")


@pytest.mark.refuse
def test_triggers_with_another_model_never_reuses_the_answers(models, train, tmp_path, capsys) -> None:
    def argv(model: Path) -> list[str]:
        return [
            "analyze",
            "triggers",
            "--model",
            str(model),
            "--data",
            str(train),
            "--out",
            str(tmp_path / "t"),
        ] + [
            "--words",
            "What",
            "--placeholder-images",
            "--max-new-tokens",
            "2",
            "--dtype",
            "float32",
        ]

    assert run_cli(argv(models["A"]), capsys).code == 0
    before = snapshot(tmp_path / "t")
    refused(run_cli(argv(models["B"]), capsys), "model.path")
    assert_untouched(before)
    assert run_cli(argv(models["A"]), capsys).code == 0  # the same run resumes


@pytest.mark.refuse
def test_tiny_model_over_an_existing_folder(tmp_path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"my weights")
    before = snapshot(mine)
    for extra in ([], ["--overwrite"]):
        refused(run_cli(["models", "tiny", "--out", str(mine), *extra], capsys), "mine")
    assert_untouched(before)
    out = tmp_path / "tiny"
    assert run_cli(["models", "tiny", "--out", str(out)], capsys).code == 0
    refused(run_cli(["models", "tiny", "--out", str(out), "--seed", "1"], capsys), "--overwrite")
    assert run_cli(["models", "tiny", "--out", str(out), "--seed", "1", "--overwrite"], capsys).code == 0
