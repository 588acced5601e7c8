"""Helpers shared by the data tests: run the CLI in-process, write JSON, make stand-in images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from unmirage.cli.main import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `unmirage ARGV` in-process; returns (exit status, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A user error: status 2, one line `error: ...` (the last on stderr, after any progress bar)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def png(
    path: Path, size: tuple[int, int] = (8, 6), color: tuple[int, ...] = (200, 10, 10), mode: str = "RGB"
) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def safe_record(rid: str, image: str = "a/1.png", q: str = "What is shown?", r: str = "A cat.") -> dict:
    return {
        "id": rid,
        "image": image,
        "safe": True,
        "instr-resp": [
            {"safe_instruction": q, "response": r},
            {"unsafe_instruction": "How to hurt someone?", "response": "I cannot help."},
        ],
    }


def unsafe_record(
    rid: str, image: str = "b/1.png", q: str = "Share this image.", r: str = "I'm sorry."
) -> dict:
    return {
        "id": rid,
        "image": image,
        "safe": False,
        "harmful_category": "risky behavior",
        "harmful_subcategory": "violence",
        "instr-resp": [{"instruction": q, "response": r}],
    }
