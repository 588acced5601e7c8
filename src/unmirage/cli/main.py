"""The `unmirage` command. Every module of this package except `main` adds its commands through `register(app)`."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

import unmirage.cli as _cli_package
from unmirage.errors import UnmirageError

COMMAND_MODULES = tuple(
    sorted(m.name for m in pkgutil.iter_modules(_cli_package.__path__) if m.name != "main")
)

app = typer.Typer(
    name="unmirage",
    help="Machine unlearning for safe vision-language models, and the attacks that expose the safety mirage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    """Machine unlearning for safe vision-language models, and the attacks that expose the safety mirage."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"unmirage.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user errors become one line on stderr and exit status 2."""
    try:
        app(args=argv, prog_name="unmirage")
    except UnmirageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
