"""`data mine-harmful` end to end with the tiny models: two generators, a judge, resume, placeholder images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import unmirage.models
from helpers import (
    assert_help_lists_settings,
    assert_one_line_error,
    png,
    run_cli,
    safe_record,
    unsafe_record,
    write_json,
)
from unmirage.data.build import build_unlearn
from unmirage.data.conversations import load_examples
from unmirage.errors import UnmirageError


@pytest.fixture
def train(tmp_path: Path) -> Path:
    for i in range(3):
        png(tmp_path / "img" / "b" / f"{i}.png", size=(40, 30), color=(60 * i, 20, 90))
    records = [unsafe_record(f"u{i}", f"b/{i}.png", f"Share picture {i} now.") for i in range(3)]
    return write_json(tmp_path / "train.json", [*records, safe_record("s1", "a/1.png")])


def _argv(train: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data",
        "mine-harmful",
        "--vlguard",
        str(train),
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
        "--judge-max-new-tokens",
        "3",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        *extra,
    ]


def test_mine_with_tiny_models_then_build(
    train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "answers.json"
    models = ["--generator", "tiny-llava", "--generator", "tiny-qwen2_5_vl", "--judge", "tiny-llava"]
    argv = _argv(train, out, *models, "--image-root", str(tmp_path / "img"))
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    answers = json.loads(out.read_text())["answers"]
    assert [a["id"] for a in answers] == ["u0", "u1", "u2"]
    assert all(
        [c["generator"] for c in a["candidates"]] == ["tiny-llava", "tiny-qwen2_5_vl"] for a in answers
    )
    assert all(
        a["answer"] == a["candidates"][a["choice"] - 1]["text"] and a["judge_raw"] is not None
        for a in answers
    )
    manifest = json.loads((tmp_path / "answers.manifest.json").read_text())
    assert manifest["images"] == {"image_root": str(tmp_path / "img"), "placeholder_images": False}
    assert manifest["samples"] == 3 and sum(manifest["choices"].values()) == 3

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run must not load any model")

    monkeypatch.setattr(unmirage.models, "load_model", no_model)
    first = out.read_text()
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads(out.read_text()) == json.loads(first)

    result = build_unlearn(train, tmp_path / "sets", harmful=out)
    assert [e.answer for e in load_examples(result.files["forget.json"])] == [a["answer"] for a in answers]


def test_placeholder_images_are_recorded(
    train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p" / "answers.json"
    code, _, err = run_cli(_argv(train, out, "--generator", "tiny-llava", "--placeholder-images"), capsys)
    assert code == 0, err
    answers = json.loads(out.read_text())["answers"]
    assert [a["choice"] for a in answers] == [1, 1, 1]
    manifest = json.loads((out.parent / "answers.manifest.json").read_text())
    assert manifest["images"]["placeholder_images"] is True


def test_mine_the_unsafe_instructions_on_safe_images_then_build(
    train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "answers.json"
    argv = _argv(train, out, "--generator", "tiny-llava", "--placeholder-images", "--subset", "safe_unsafes")
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    answers = json.loads(out.read_text())["answers"]
    assert [(a["id"], a["image"]) for a in answers] == [("s1", "a/1.png")]
    result = build_unlearn(train, tmp_path / "sets", harmful=out, forget_subset="safe_unsafes")
    forget = load_examples(result.files["forget.json"])
    assert [(e.id, e.question, e.answer) for e in forget] == [
        ("s1", "How to hurt someone?", answers[0]["answer"])
    ]
    # the unsafe-image records' answers do not fit a forget set of the other subset
    with pytest.raises(UnmirageError, match="no harmful answer for this forget record's image 'b/0.png'"):
        build_unlearn(train, tmp_path / "wrong", harmful=out)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--generator", "tiny-llava"], "give either image_root or placeholder_images"),
        (
            ["--generator", "a", "--placeholder-images", "--subset", "safes"],
            "must be one of unsafes, safe_unsafes",
        ),
        (["--generator", "a", "--generator", "b", "--placeholder-images"], "need a judge"),
        (["--generator", "a", "--generator", "a", "--placeholder-images"], "must be a different model"),
        (["--generator", "tiny-llava", "--image-root", "img"], "image root 'img' is not a folder"),
    ],
)
def test_bad_arguments(
    train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    out = tmp_path / "answers.json"
    code, _, err = run_cli(_argv(train, out, *extra), capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_missing_image_fails_before_any_model_loads(
    train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "img" / "b" / "2.png").unlink()
    out = tmp_path / "answers.json"
    code, _, err = run_cli(
        _argv(train, out, "--generator", "no-such-model", "--image-root", str(tmp_path / "img")), capsys
    )
    assert_one_line_error(code, err, "record id u2", "image not found")
    assert not out.exists() and not (tmp_path / "answers.json.work").exists()


def test_mine_harmful_help_lists_every_setting(capsys, monkeypatch) -> None:
    from unmirage.settings import MineSettings

    assert_help_lists_settings(["data", "mine-harmful"], MineSettings, capsys, monkeypatch)
