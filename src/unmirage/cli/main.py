"""The `unmirage` command. Every module of this package except `main` adds its commands through `register(app)`."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

import unmirage.cli as _cli_package
from unmirage.errors import UnmirageError
from unmirage.judges import JUDGES

COMMAND_MODULES = tuple(
    sorted(m.name for m in pkgutil.iter_modules(_cli_package.__path__) if m.name not in {"main", "settings"})
)


def _flags_without_type(option: typer.core.TyperOption, ctx: object) -> str | None:
    """Help shows on/off options as bare flags (`--resume`), not as if they took a `<bool>` value."""
    return None if option.is_flag else _typed_option(option, ctx)


_typed_option = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flags_without_type

app = typer.Typer(
    name="unmirage",
    help="Machine unlearning for safe vision-language models, and the attacks that expose the safety mirage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from unmirage import __version__

        typer.echo(f"unmirage {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Machine unlearning for safe vision-language models, and the attacks that expose the safety mirage.

    Example: unmirage lab run --out lab-out
    """


for _name in COMMAND_MODULES:
    importlib.import_module(f"unmirage.cli.{_name}").register(app)

VLG = "data/vlguard"
EXAMPLES = {
    "info": "unmirage info",
    "eval": f"unmirage eval --model runs/tiny/npo --vlguard-test {VLG}/test.json --share "
    f"{VLG}/test_share_1shot.json --what {VLG}/test_what_3shot.json --benchmark xstest --case figstep.what3 "
    "--data-root data --placeholder-images --subsample 40 --out runs/tiny/eval-npo",
    "generate": f"unmirage generate --model tiny-llava --data {VLG}/test.json --subset unsafes "
    "--placeholder-images --limit 10 --out gens.jsonl",
    "judge validate": "unmirage judge validate --judge refusal --labels data/labels/refusal_example.jsonl "
    "--out runs/validate-refusal",
    "attack gcg": f"unmirage attack gcg --model runs/tiny/npo --data {VLG}/test.json --placeholder-images "
    "--steps 20 --limit 5 --out gcg.json",
    "report": "unmirage report runs/tiny/eval-base runs/tiny/eval-npo --out runs/tiny/report",
    "unlearn": "unmirage unlearn recipes/tiny/npo.yaml train.max_steps=5 method.beta=0.5",
    "analyze spurious": f"unmirage analyze spurious {VLG}/train.json --out runs/spurious",
    "analyze triggers": f"unmirage analyze triggers --model runs/tiny/npo --data {VLG}/test.json "
    "--placeholder-images --out runs/triggers",
    "analyze probe": "unmirage analyze probe --model runs/smollm2 --forget runs/unlearn/forget.json --retain "
    f"runs/unlearn/retain.json --data {VLG}/test.json --layers 0-29 --subsample 100 --out runs/probe",
    "analyze hazard-captions": "unmirage analyze hazard-captions --model runs/smol-vlm-hazard --captions "
    "runs/hazard-data/captions_test.json --image-root runs/hazard-data/images --out runs/hazard-captions",
    "attack build": f"unmirage attack build --data {VLG}/test.json --trigger What --k 3 --out what_3shot.json",
    "data check": f"unmirage data check {VLG}/train.json --allow-duplicate-ids --image-root {VLG}/train",
    "data build-unlearn": f"unmirage data build-unlearn --vlguard {VLG}/train.json --harmful "
    "runs/tiny/harmful.json --out runs/tiny/unlearn",
    "data build-sft": f"unmirage data build-sft --vlguard {VLG}/train.json --out data/vlguard_sft.json",
    "data mine-harmful": f"unmirage data mine-harmful --vlguard {VLG}/train.json --generator "
    "runs/tiny/model --placeholder-images --max-new-tokens 16 --out runs/tiny/harmful.json",
    "data hazard-images": f"unmirage data hazard-images --vlguard {VLG} --out runs/hazard-data",
    "data fetch vlguard": f"unmirage data fetch vlguard --out {VLG}",
    "lab run": "unmirage lab run --out lab-out",
    "models tiny": "unmirage models tiny --family llava --out runs/tiny/model",
    "models convert-gguf": "unmirage models convert-gguf --out runs/smollm2",
    "models pretrain-vision": "unmirage models pretrain-vision --model runs/smol-vlm --out runs/smol-vlm-vision",
    "models compose": "unmirage models compose --language-model runs/smollm2 --vision tiny --out runs/smol-vlm",
    "pipeline run": "unmirage pipeline run recipes/smol-vlguard/pipeline.yaml --dry-run",
    "benchmark list": "unmirage benchmark list",
    "benchmark show": "unmirage benchmark show xstest --data-root data",
    "utility lm-eval": "unmirage utility lm-eval --model runs/tiny/npo --tasks mmlu --limit 20 --out runs/tiny/eval-npo",
}
"""One example command per command, shown at the end of its `--help`."""
# one command per registered judge: its example is generated, so a new judge needs no entry here
EXAMPLES.update(
    {f"judge {name}": f"unmirage judge {name} --answers gens.jsonl --out judged.jsonl" for name in JUDGES}
)


def _add_examples(group: typer.Typer, prefix: str = "") -> None:
    for command in group.registered_commands:
        name = prefix + (command.name or command.callback.__name__)
        command.epilog = f"Example: {EXAMPLES[name]}"
    for sub in group.registered_groups:
        _add_examples(sub.typer_instance, f"{prefix}{sub.name} ")


_add_examples(app)


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
