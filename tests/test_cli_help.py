"""The command line as a new user meets it: --version, an example in every --help, flags shown as flags,
errors that name the fix, and `info`'s measured speed."""

from __future__ import annotations

import json

import pytest

from helpers import assert_one_line_error, run_cli, safe_record, unsafe_record, write_json
from unmirage.cli.main import EXAMPLES, app


def leaf_commands(group=app, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    names = [(*prefix, c.name or c.callback.__name__) for c in group.registered_commands]
    for sub in group.registered_groups:
        names += leaf_commands(sub.typer_instance, (*prefix, sub.name))
    return names


def test_version(capsys):
    from unmirage import __version__

    result = run_cli(["--version"], capsys)
    assert result.code == 0 and result.out.strip() == f"unmirage {__version__}"


@pytest.mark.parametrize("command", leaf_commands(), ids=" ".join)
def test_every_help_has_an_example_of_that_command_and_bare_flags(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = run_cli([*command, "--help"], capsys)
    assert result.code == 0
    example = EXAMPLES[" ".join(command)]
    assert example.startswith("unmirage " + " ".join(command))
    assert "Example: " + example in " ".join(result.out.split())  # wrapped lines joined
    assert "<bool>" not in result.out


def test_examples_name_only_existing_commands():
    assert set(EXAMPLES) == {" ".join(c) for c in leaf_commands()}


def test_duplicate_ids_error_names_the_flag(tmp_path, capsys):
    path = write_json(tmp_path / "train.json", [safe_record("s1"), unsafe_record("u1"), safe_record("s1")])
    code, _, err = run_cli(["data", "check", str(path)], capsys)
    assert_one_line_error(code, err, "duplicate id", "--allow-duplicate-ids")
    code, out, _ = run_cli(["data", "check", str(path), "--allow-duplicate-ids"], capsys)
    assert code == 0 and "duplicate ids: s1" in out


def test_build_unlearn_without_harmful_names_mine_harmful(tmp_path, capsys):
    path = write_json(tmp_path / "train.json", [safe_record("s1"), unsafe_record("u1")])
    code, _, err = run_cli(
        ["data", "build-unlearn", "--vlguard", str(path), "--out", str(tmp_path / "u")], capsys
    )
    assert code == 0
    assert "unmirage data mine-harmful --vlguard" in err and "--harmful harmful.json" in err
    manifest = json.loads((tmp_path / "u" / "manifest.json").read_text())
    assert manifest["forget_answers"] == "dataset"


def test_info_prints_the_measured_matmul_speed(capsys):
    result = run_cli(["info"], capsys)
    assert result.code == 0
    line = next(line for line in result.out.splitlines() if "fp32 matmul" in line)
    assert float(line.split()[2]) > 0 and "GFLOP/s" in line


def test_push_to_hub_is_refused_with_the_upload_command(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: tiny-llava\ndata: {forget: f.json, retain: r.json, placeholder_images: true}\n"
        "method: {name: npo}\ntrain: {push_to_hub: true}\noutput_dir: out\n"
    )
    code, _, err = run_cli(["unlearn", str(recipe), "--check"], capsys)
    assert_one_line_error(code, err, "train.push_to_hub", "hf upload REPO_ID OUTPUT_DIR")


def test_lab_run_ends_by_pointing_to_your_own_model(tmp_path, capsys, monkeypatch):
    import unmirage.lab.narrative as narrative
    import unmirage.lab.run as lab

    monkeypatch.setattr(lab, "run_lab", lambda *args, **kwargs: {"models": {}})
    monkeypatch.setattr(narrative, "table_markdown", lambda rows: "| table |")
    result = run_cli(["lab", "run", "--out", str(tmp_path / "lab"), "--quiet"], capsys)
    assert result.code == 0
    assert (
        result.out.strip().splitlines()[-1]
        == 'Next: the same steps on your own model: README.md, section "Your own model".'
    )
