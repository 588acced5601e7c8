"""The hostile-input suite: commands tried as a hostile or careless user would.

Every case is a test marked `refuse` (the command must stop with one clean `error: ...` line) or `survive`
(it must carry on correctly: resume, fall back, record), and every case checks that no file it did not
create was changed. The terminal summary counts cases tried, refused cleanly, survived and data lost.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import cli_status

KINDS = ("refuse", "survive")
_TALLY: dict[str, int] = {}


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny LLaVA folders: A, and B (other weights), made once per test process (tests only read them)."""
    root = tmp_path_factory.mktemp("models")
    for name, hidden in (("A", 64), ("B", 32)):
        argv = ["models", "tiny", "--family", "llava", "--out", str(root / name), "--hidden", str(hidden)]
        assert cli_status(argv) == 0
    return {"A": root / "A", "B": root / "B"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "refuse: hostile case that must end in one clean error line")
    config.addinivalue_line("markers", "survive: hostile case the command must survive correctly")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.failed):
        return
    kind = next((k for k in KINDS if k in report.keywords), None)
    if kind is None:
        return
    _TALLY["tried"] = _TALLY.get("tried", 0) + 1
    _TALLY[kind] = _TALLY.get(kind, 0) + 1
    if report.passed:
        _TALLY[f"{kind}_ok"] = _TALLY.get(f"{kind}_ok", 0) + 1
    elif "DataLost" in str(report.longrepr):
        _TALLY["lost"] = _TALLY.get("lost", 0) + 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TALLY:
        return
    t = _TALLY.get
    terminalreporter.write_line(
        f"hostile suite: {t('tried', 0)} cases tried; {t('refuse_ok', 0)} of {t('refuse', 0)} refused cleanly; "
        f"{t('survive_ok', 0)} of {t('survive', 0)} survived correctly; data lost in {t('lost', 0)}"
    )
