"""Command-line options generated from a settings model: one definition for the library and the CLI.

`settings_command(Model, run)` returns a typer command whose options are the fields of `Model` (a
`unmirage.config.StrictModel` whose fields are declared with `unmirage.config.setting`): the field's type,
default and description become the option's type, default and help; `panel` groups it in `--help`, `flag`
renames it; a list is a repeatable option, a bool an `--x/--no-x` flag, and a nested optional model an on/off
flag plus `--PREFIX-NAME` options for the fields it names. Every such command also takes `--config FILE.yaml`
and trailing `key=value` overrides; a setting's value comes from, the later winning: the model's default,
the config file, an option given on the command line, an override. The settings are validated once, by the
model, so a bad value is the same one-line error whichever way it came. Typer reads a command's options from
`inspect.signature`, so the command is a function with a generated `__signature__`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from copy import copy
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from unmirage.config import apply_overrides, read_yaml, validate
from unmirage.errors import UnmirageError

M = TypeVar("M", bound=BaseModel)

CONFIG_PANEL = "Settings file"
"""The help panel of `--config` and the `key=value` overrides."""
_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=.*")
"""A `key.sub=value` override (told apart from a file given as a positional argument)."""
_GIVEN = {"COMMANDLINE", "ENVIRONMENT", "PROMPT"}
"""Where a value comes from when the user gave it (click's `ParameterSource` names; typer bundles click)."""


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _nested_model(info: FieldInfo) -> type[BaseModel] | None:
    """The settings model of a field typed `Model | None`, else None."""
    for arg in (info.annotation, *get_args(info.annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _choices(annotation: Any) -> list[str]:
    """The values of a `Literal[...]` (or `Literal[...] | None`) annotation, else []."""
    for arg in (annotation, *get_args(annotation)):
        if get_origin(arg) is Literal:
            return [str(value) for value in get_args(arg)]
    return []


def flag_name(name: str, info: FieldInfo) -> str:
    """The option of a field: `--judge` for `asr_methods` declared with flag="judge", else `--max-new-tokens`."""
    return "--" + (_extra(info).get("flag") or name).replace("_", "-")


def _help_text(info: FieldInfo, flags: dict[str, str]) -> str:
    """The field's description, with `other_setting` references written as that setting's flag."""
    text = info.description or ""
    return re.sub(r"`([a-z_][a-z0-9_]*)`", lambda m: flags.get(m.group(1), m.group(0)), text)


def _option(
    name: str, info: FieldInfo, flags: dict[str, str], panel: str | None, flag: str | None = None
) -> inspect.Parameter:
    """One typer option for one field (keyword-only, so required and optional ones mix in any order)."""
    flag = flag or flags[name]
    help_text = _help_text(info, flags)
    annotation: Any = info.annotation
    if info.is_required():
        # the value may come from --config, so the command line cannot insist on it: the model does
        default: Any = None
        annotation = annotation | None
        help_text += " Required (here or in --config)."
    else:
        default = info.get_default(call_default_factory=True)
    if _extra(info).get("argument"):
        given = typer.Argument(default, help=help_text, metavar=name.upper(), show_default=False)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=given, annotation=annotation)
    decls = [f"{flag}/--no-{flag[2:]}" if annotation is bool else flag]
    choices = _choices(annotation)
    if choices:
        # the model checks the choice, so a wrong one is the same one-line error as from --config
        annotation = str | None if default is None else str
    metavar = "|".join(choices) if choices else None
    option = typer.Option(default, *decls, help=help_text, rich_help_panel=panel, metavar=metavar)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


class _Plan:
    """The generated options of one settings model and how to turn their values back into settings data."""

    def __init__(self, model: type[BaseModel], reserved: Sequence[str]) -> None:
        self.parameters: list[inspect.Parameter] = []
        self.fields: list[str] = []
        self.arguments: list[str] = []
        self.nested: dict[str, dict[str, str]] = {}
        """field -> {option parameter -> field of its nested model}"""
        fields = {n: i for n, i in model.model_fields.items() if _extra(i).get("cli", True)}
        flags = {n: flag_name(n, i) for n, i in fields.items()}
        for name, info in fields.items():
            if name in reserved:
                raise ValueError(f"settings field '{name}' clashes with an option of the command")
            panel = _extra(info).get("panel")
            sub_model = _nested_model(info)
            names = _extra(info).get("options")
            if sub_model is not None and names:
                self._nested(name, info, sub_model, names, flags, panel)
                continue
            self.parameters.append(_option(name, info, flags, panel))
            self.fields.append(name)
            if _extra(info).get("argument"):
                self.arguments.append(name)

    def _nested(
        self,
        name: str,
        info: FieldInfo,
        sub_model: type[BaseModel],
        names: Sequence[str],
        flags: dict[str, str],
        panel: str | None,
    ) -> None:
        """`--gcg-build/--no-gcg-build` plus `--gcg-steps`, ... for `gcg_build: GCGConfig | None`."""
        on = FieldInfo(annotation=bool, default=False, description=info.description)
        self.parameters.append(_option(name, on, flags, panel))
        prefix = _extra(info).get("prefix") or name
        self.nested[name] = {}
        for sub in names:
            parameter = f"{prefix}_{sub}"
            sub_info = sub_model.model_fields[sub]
            flag = "--" + parameter.replace("_", "-")
            sub_help = copy(sub_info)
            sub_help.description = f"{flags[name]}: {sub_info.description or sub}"
            self.parameters.append(_option(sub, sub_help, flags, panel, flag=flag).replace(name=parameter))
            self.nested[name][parameter] = sub

    def settings(
        self, values: dict[str, Any], ctx: typer.Context, config: Path | None, overrides: Sequence[str]
    ) -> dict[str, Any]:
        """Merge, the later winning: the config file, the options given, the `key=value` overrides.

        An option left at its default is not given, so it does not override the config file.
        """

        def given(parameter: str) -> bool:
            source = ctx.get_parameter_source(parameter)
            return source is not None and source.name in _GIVEN

        data = read_yaml(config) if config is not None else {}
        for name in self.arguments:
            # `analyze spurious --benchmark x ngram=2`: the optional argument took the first override
            if given(name) and _OVERRIDE.fullmatch(str(values[name])) and not Path(values[name]).exists():
                overrides = [str(values.pop(name)), *overrides]
        data |= {name: values[name] for name in self.fields if name in values and given(name)}
        for name, subs in self.nested.items():
            if given(name):
                data[name] = (data.get(name) or {}) if values[name] else None
            chosen = {p: sub for p, sub in subs.items() if given(p)}
            if chosen and data.get(name) is None:
                flags = ", ".join("--" + p.replace("_", "-") for p in chosen)
                raise UnmirageError(f"{flags}: these set {name}, give --{name.replace('_', '-')} too")
            if chosen:
                data[name] = {**data[name], **{sub: values[p] for p, sub in chosen.items()}}
        return apply_overrides(data, overrides)


def settings_command(
    model: type[M],
    run: Callable[..., None],
    *,
    extra: Sequence[inspect.Parameter] = (),
    prepare: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    doc: str | None = None,
) -> Callable[..., None]:
    """A typer command: `model`'s fields as options, then `--config` and `key=value` overrides.

    `extra` are the command's own options (an output folder, `--overwrite`), passed to `run` by keyword
    after the validated settings: `run(settings, **extra_values)`. `prepare(data, extra_values)` may add to
    the settings data before validation (a secret read from the environment variable an option names), and
    takes out of `extra_values` the options it used up.
    """
    reserved = [p.name for p in extra] + ["config", "overrides", "ctx"]
    plan = _Plan(model, reserved)
    config = inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            None,
            "--config",
            help="A YAML file of settings (keys: the options' names with underscores); options given here "
            "win over it, and KEY=VALUE overrides win over both.",
            rich_help_panel=CONFIG_PANEL,
            exists=True,
            dir_okay=False,
        ),
        annotation=Path | None,
    )
    overrides = inspect.Parameter(
        "overrides",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Argument(
            None,
            metavar="KEY=VALUE",
            help="Settings overrides, applied last: a setting's name with underscores, = and a YAML value "
            "(e.g. batch_size=4, a nested one as a.b=1).",
            show_default=False,
        ),
        annotation=list[str] | None,
    )
    extra_names = [p.name for p in extra]
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)

    def command(ctx: typer.Context, **values: Any) -> None:
        own = {name: values[name] for name in extra_names}
        data = plan.settings(values, ctx, values["config"], values["overrides"] or [])
        if prepare is not None:
            prepare(data, own)
        source = values["config"] or "command line"
        run(validate(model, data, source=source), **own)

    command.__signature__ = inspect.Signature([context, *plan.parameters, *extra, config, overrides])  # type: ignore[attr-defined]
    command.__doc__ = doc or run.__doc__
    command.__name__ = getattr(run, "__name__", "command")
    return command


def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """A command's own option (not a setting), for `settings_command(extra=...)`."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def out_option(help: str) -> inspect.Parameter:
    """The required `--out` of a command that writes one output (folder or file)."""
    return option("out", Path, typer.Option(..., "--out", help=help))


def overwrite_option(help: str) -> inspect.Parameter:
    """`--overwrite`: replace an output that holds another run instead of refusing it."""
    return option("overwrite", bool, typer.Option(False, "--overwrite", help=help))
