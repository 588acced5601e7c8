"""README's "Your own model" walk-through runs as written: its shell block (in-process, command by command)
and its Python block, on the first records of the real VLGuard files (skipped without them)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
TRAIN_RECORDS, TEST_RECORDS = 40, 60


def section_blocks(heading: str) -> dict[str, str]:
    """The first fenced block of each language in README's section `heading`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    blocks: dict[str, str] = {}
    for language, body in re.findall(r"```(\w+)\n(.*?)```", text[start:end], flags=re.S):
        blocks.setdefault(language, body)
    return blocks


def shell_commands(block: str) -> list[list[str]]:
    """Each command of a shell block (backslash continuations joined) as an argv."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


@pytest.fixture
def workdir(tmp_path, monkeypatch, vlguard_dir) -> Path:
    """A folder laid out as the README expects: data/vlguard with the first records of each real file (the
    attack files keep the ids of the kept test records) and recipes/ of this checkout."""
    target = tmp_path / "data" / "vlguard"
    target.mkdir(parents=True)
    train = json.loads((vlguard_dir / "train.json").read_text())[:TRAIN_RECORDS]
    test = json.loads((vlguard_dir / "test.json").read_text())[:TEST_RECORDS]
    ids = {r["id"] for r in test}
    (target / "train.json").write_text(json.dumps(train))
    (target / "test.json").write_text(json.dumps(test))
    for name in ("test_share_1shot.json", "test_what_3shot.json"):
        kept = [r for r in json.loads((vlguard_dir / name).read_text()) if r["id"] in ids]
        (target / name).write_text(json.dumps(kept))
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_your_own_model_shell_block_runs(workdir, capsys):
    commands = shell_commands(section_blocks("Your own model")["bash"])
    assert [c[1] for c in commands] == [
        "models",
        "data",
        "data",
        "data",
        "unlearn",
        "eval",
        "eval",
        "report",
    ]
    for argv in commands:
        assert argv[0] == "unmirage"
        result = run_cli(argv[1:], capsys)
        assert result.code == 0, (argv, result.err[-2000:])
        if argv[1] == "eval":  # one progress bar per case, named by it
            for case in ("safe_normal", "safe_share", "unsafe_normal", "unsafe_attack"):
                assert f"generating {case}" in result.err, case
    harmful = json.loads((workdir / "runs/tiny/harmful.json").read_text())
    assert harmful  # one mined answer per unsafe training record
    steps = [json.loads(line) for line in (workdir / "runs/tiny/npo/metrics.jsonl").read_text().splitlines()]
    assert steps[-1]["step"] == 20 and steps[-1]["nll_forget"] > steps[0]["nll_forget"]  # NPO moved the model
    summary = json.loads((workdir / "runs/tiny/report/summary.json").read_text())
    assert "NPO" in json.dumps(summary) and (workdir / "runs/tiny/report/report.html").is_file()


def test_readme_your_own_model_python_block_runs(workdir, capsys):
    code = section_blocks("Your own model")["python"]
    exec(compile(code, "README.md (Your own model)", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "ASR 3-shot What" in printed and "NPO" in printed
    assert (workdir / "runs/tiny-py/npo/model.safetensors").is_file()
    assert (workdir / "runs/tiny-py/report/report.md").is_file()


def test_api_doc_cells_run_in_order(workdir, capsys):
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    cells = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(cells) == 5
    namespace: dict = {"__name__": "api_doc"}
    for number, cell in enumerate(cells, 1):
        exec(compile(cell, f"docs/api.md cell {number}", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == namespace["unmirage"].__version__
    assert "LlavaForConditionalGeneration llava" in printed
    assert "10 precomputed True" in printed
    assert (
        printed[-2] == "['chart.png', 'headline.csv', 'report.html', 'report.md', 'summary.json', 'table.md']"
    )
    assert printed[-1] == "<command line>: method.beta: must be a finite number > 0, got -1.0 (method npo)"
