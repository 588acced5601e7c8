"""Command-line options generated from settings models (`unmirage.cli.settings`), and the commands built so."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import typer

from helpers import assert_help_lists_settings, assert_one_line_error, run_cli
from unmirage.cli.settings import flag_name, option, settings_command
from unmirage.config import StrictModel, setting
from unmirage.errors import UnmirageError


class Inner(StrictModel):
    depth: int = setting(2, ge=1, help="How deep.")
    width: int = setting(8, help="How wide.")
    seed: int = 0


class Toy(StrictModel):
    name: str = setting(help="The run's name.", panel="Basics")
    count: int = setting(3, ge=0, help="How many; see `tags`.", panel="Knobs")
    ratio: float = setting(0.5, help="A fraction.", panel="Knobs")
    tags: list[str] = setting(default_factory=lambda: ["a"], help="A tag, repeatable.", flag="tag")
    loud: bool = setting(False, help="Say more.")
    path: Path | None = setting(None, help="A file.")
    mode: Literal["fast", "slow"] = setting("fast", help="Speed.")
    secret: str | None = setting(None, help="Never a flag.", cli=False)
    inner: Inner | None = setting(None, help="Go deeper.", options=("depth", "width"), prefix="in")


def toy_app(seen: list) -> typer.Typer:
    def run(settings: Toy, *, out: Path) -> None:
        seen.append((settings, out))

    app = typer.Typer(add_completion=False)
    out = option("out", Path, typer.Option(..., help="Where to write."))
    app.command("toy")(settings_command(Toy, run, extra=[out], doc="A toy."))
    app.command("other")(lambda: None)  # two commands: typer then needs the command's name
    return app


def call(argv: list[str]) -> tuple[Toy, Path]:
    seen: list = []
    toy_app(seen)(args=["toy", *argv], prog_name="t", standalone_mode=False)
    assert len(seen) == 1
    return seen[0]


def test_help_shows_types_defaults_help_text_and_panels(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit):
        toy_app([])(args=["toy", "--help"], prog_name="t")
    text = " ".join(capsys.readouterr().out.split())
    for needle in (
        "--count <int> How many; see --tag. [default: 3]",  # a backticked setting is shown as its flag
        "--ratio <float> A fraction. [default: 0.5]",
        "--tag <list[str]> A tag, repeatable. [default: a]",
        "--loud --no-loud Say more.",
        "--path <path> A file.",
        "--mode fast|slow Speed. [default: fast]",
        "--name <str> The run's name. Required (here or in --config).",
        "--inner --no-inner Go deeper.",
        "--in-depth <int> --inner: How deep. [default: 2]",
        "--config <file>",
        "KEY=VALUE",
    ):
        assert needle in text, needle
    assert "--secret" not in text and "--in-seed" not in text
    # panels in the order their first field appears, after the command's own options
    assert text.index("Options") < text.index("Basics") < text.index("Knobs") < text.index("Settings file")


def test_options_become_typed_settings(tmp_path):
    settings, out = call(
        ["--name", "x", "--tag", "b", "--tag", "c", "--loud", "--path", "p.json", "--mode", "slow"]
        + ["--count", "4", "--out", str(tmp_path)]
    )
    assert out == tmp_path
    assert settings == Toy(name="x", tags=["b", "c"], loud=True, path=Path("p.json"), mode="slow", count=4)
    assert settings.inner is None


def test_defaults_are_the_models():
    settings, _ = call(["--name", "x", "--out", "o"])
    assert settings == Toy(name="x")
    assert flag_name("tags", Toy.model_fields["tags"]) == "--tag"


def test_precedence_defaults_config_options_overrides(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text("name: from-file\ncount: 5\nratio: 0.25\nloud: true\ninner: {width: 3}\n")
    base = ["--out", "o", "--config", str(config)]
    settings, _ = call(base)
    assert (settings.name, settings.count, settings.ratio, settings.loud) == ("from-file", 5, 0.25, True)
    assert settings.inner == Inner(width=3)
    assert settings.mode == "fast"  # neither in the file nor given: the model's default
    # an option given wins over the file; one left at its default does not
    settings, _ = call([*base, "--count", "7", "--no-loud", "--in-depth", "4"])
    assert (settings.count, settings.ratio, settings.loud) == (7, 0.25, False)
    assert settings.inner == Inner(depth=4, width=3)
    # overrides win over both
    settings, _ = call([*base, "--count", "7", "count=9", "inner.width=6", "tags=[x, y]"])
    assert (settings.count, settings.inner.width, settings.tags) == (9, 6, ["x", "y"])
    # --no-inner switches off what the file switched on
    assert call([*base, "--no-inner"])[0].inner is None


def test_nested_options_need_their_switch():
    assert call(["--name", "x", "--out", "o", "--inner"])[0].inner == Inner()
    assert call(["--name", "x", "--out", "o", "--inner", "--in-width", "5"])[0].inner == Inner(width=5)
    with pytest.raises(UnmirageError, match="--in-width: these set inner, give --inner too"):
        call(["--name", "x", "--out", "o", "--in-width", "5"])


def test_bad_values_are_one_line_errors_naming_the_setting(tmp_path):
    with pytest.raises(UnmirageError, match=r"^command line: bogus: unknown key$"):
        call(["--name", "x", "--out", "o", "bogus=1"])
    with pytest.raises(UnmirageError, match=r"^command line: name: required key is missing$"):
        call(["--out", "o"])
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\ncount: -1\n")
    with pytest.raises(UnmirageError, match=r"bad.yaml: count: .*greater than or equal to 0"):
        call(["--out", "o", "--config", str(config)])
    with pytest.raises(
        UnmirageError, match=r"^command line: mode: Input should be 'fast' or 'slow' \(got 'medium'\)$"
    ):
        call(["--name", "x", "--out", "o", "--mode", "medium"])  # a choice is checked by the model too
    with pytest.raises(UnmirageError, match="must look like key.sub=value"):
        call(["--name", "x", "--out", "o", "justaword"])


def test_a_settings_field_may_not_shadow_a_command_option():
    with pytest.raises(ValueError, match="'name' clashes"):
        settings_command(Toy, lambda settings: None, extra=[option("name", str, typer.Option("x"))])


# --- the commands built from settings ---------------------------------------------------------------


def test_eval_help_lists_every_setting(capsys, monkeypatch):
    from unmirage.eval import EvalSettings

    text = assert_help_lists_settings(["eval"], EvalSettings, capsys, monkeypatch)
    for panel in ("Model", "Cases", "Attacks", "Judges", "Utility", "Settings file"):
        assert f" {panel} " in text


def test_eval_reads_a_config_file_and_rejects_unknown_overrides(tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(f"model: m\nvlguard_test: {tmp_path / 't.json'}\nsubsample: 0\n")
    code, _, err = run_cli(["eval", "--config", str(config), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "eval.yaml: subsample: Value error, must be at least 1")
    code, _, err = run_cli(
        ["eval", "--config", str(config), "--subsample", "2", "--out", str(tmp_path / "o"), "judges=x"],
        capsys,
    )
    assert_one_line_error(code, err, "judges: unknown key")
