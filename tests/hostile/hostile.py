"""Helpers of the hostile suite: snapshots that prove nothing was lost, clean-refusal checks, kill -9 runs.

Only the run that is killed needs a process of its own; the uninterrupted run it is compared with and the
resumed run go through `helpers.cli_status` in the test's process (no second start of torch and the model).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import CliResult, assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).with_name("killer.py")
FAST_DECODING = ["--max-new-tokens", "3", "--batch-size", "2", "--dtype", "float32"]
"""Generation options that keep the tiny models' runs short."""


class DataLost(AssertionError):
    """A file the command did not create was changed or removed."""


def snapshot(*paths: Path) -> dict[Path, bytes | None]:
    """The bytes of every file under `paths` (a folder: all files below it)."""
    found: dict[Path, bytes | None] = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            found[file] = file.read_bytes() if file.is_file() else None
    return found


def assert_untouched(before: dict[Path, bytes | None]) -> None:
    """Every file of the snapshot still holds the same bytes."""
    for path, data in before.items():
        now = path.read_bytes() if path.is_file() else None
        if now != data:
            raise DataLost(f"{path} was {'removed' if now is None else 'changed'}")


def refused(result: CliResult, *needles: str) -> None:
    """A clean refusal: exit status 2, one `error: ...` line naming `needles`, no traceback."""
    assert "Traceback" not in result.err, result.err
    assert_one_line_error(result.code, result.err, *needles)


def run_killed(target: str, nth: int, when: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `unmirage ARGV` in a child process that kill -9s itself at the `nth` call of `target`
    (`module:Class.method` or `module:function`), `before` or `after` the call."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(
        [sys.executable, str(KILLER), target, str(nth), when, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
