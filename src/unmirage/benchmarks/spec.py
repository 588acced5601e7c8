"""The benchmark spec schema and registry: one packaged YAML per benchmark, loaders registered by decorator.

A spec names its data files (relative to the benchmark's data folder, `<data root>/<name>/` or
`<data root>/<data_dir>/`), the loader
that reads them, and its cases. Each case has a kind (`refusal`: safe prompts, the rate is the rejection
rate; `attack`: harmful prompts, the rate is the attack success rate), a record selector the loader
understands, an optional transform, its default judges, a display label and the case it pairs with.
Every problem with a spec is a one-line `UnmirageError` naming the spec file and the dotted field.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from unmirage.config import StrictModel, format_validation_error, read_yaml
from unmirage.errors import UnmirageError

DATA_DIR_ENV = "UNMIRAGE_DATA_DIR"
"""Environment variable naming the data root (one sub-folder per benchmark) when no `--data-root` is given."""
SPECS_DIR = Path(__file__).parent / "specs"
"""The packaged benchmark YAMLs (shipped in the wheel with the package)."""


class RewriteTransform(StrictModel):
    """Rewrite each question to start with `word`, K shots per question, with the rule rewrites of `attack build`."""

    type: Literal["rewrite"]
    word: str = Field(min_length=1, pattern=r"^\S+$")
    k: int = Field(1, ge=1)


class PrefillTransform(StrictModel):
    """Start the model's answer with `text` (the prefilling attack)."""

    type: Literal["prefill"]
    text: str = Field(min_length=1)


class TypographyTransform(StrictModel):
    """Draw a record field plus an empty numbered list on an image (FigStep); the question becomes `prompt`."""

    type: Literal["typography"]
    field: str = "instruction"
    prompt: str = Field(min_length=1)


Transform = Annotated[RewriteTransform | PrefillTransform | TypographyTransform, Field(discriminator="type")]


class CaseSpec(StrictModel):
    """One measured case of a benchmark."""

    kind: Literal["refusal", "attack"]
    records: dict[str, str | int | bool] = Field(default_factory=dict)
    transform: Transform | None = None
    judges: list[str] = Field(min_length=1)
    label: str
    pairs_with: str | None = None
    by_category: bool = False
    """Report the rate of each category (e.g. MOSSBench's over-sensitivity types) next to the case's."""


class BenchmarkSpec(StrictModel):
    """A benchmark as data: its files, its loader and its cases."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str
    licence: str
    data_dir: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """The data folder under the data root (default: the benchmark's name), so that several benchmarks can
    read one data set's files."""
    data: dict[str, str] = Field(min_length=1)
    loader: str
    cases: dict[str, CaseSpec] = Field(min_length=1)
    source: Path | None = Field(default=None, exclude=True)

    def folder(self, data_root: str | os.PathLike) -> Path:
        """This benchmark's data folder under `data_root` (`data_dir`, else its name)."""
        return Path(data_root) / (self.data_dir or self.name)

    def paths(self, data_root: str | os.PathLike) -> dict[str, Path]:
        """Each data file's path under `data_root`."""
        return {key: self.folder(data_root) / rel for key, rel in self.data.items()}


@dataclass(frozen=True)
class BenchmarkPrompt:
    """One prompt of a case: what generation needs, plus the fields a report groups by."""

    case: str
    id: str
    question: str
    image: str | None = None
    category: str | None = None
    shot: int = 0
    prefill: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    judged_question: str | None = None
    """The request an answer is judged against when the prompt does not show it (FigStep's typographic
    image hides the question: the judges read the original); None: `question`."""


@dataclass(frozen=True)
class Loader:
    """A registered loader: reads the files of a spec and returns the records one selector picks."""

    name: str
    function: Callable[[dict[str, Path], dict[str, Any], str], list[BenchmarkPrompt]]
    selectors: frozenset[str]
    files: frozenset[str]
    file_selectors: frozenset[str]
    image_root: bool = False
    """True when the prompts' image paths are relative to an image root the user gives (`--image-root`);
    otherwise they are usable paths as given (or None: text only)."""


LOADERS: dict[str, Loader] = {}


def register_loader(
    name: str,
    selectors: Iterable[str] = (),
    *,
    files: Iterable[str] = (),
    file_selectors: Iterable[str] = (),
    image_root: bool = False,
) -> Callable:
    """Decorator: register `function(paths, records, case) -> prompts` as loader `name`.

    `selectors` are the keys a case's `records` may use; `files` the `data` keys every spec of this loader
    must name; `file_selectors` the selectors whose value must be a `data` key. Anything else is a spec error.
    `image_root`: the prompts' image paths are relative to an image root given at evaluation time.
    """

    def wrap(function: Callable) -> Callable:
        LOADERS[name] = Loader(
            name, function, frozenset(selectors), frozenset(files), frozenset(file_selectors), image_root
        )
        return function

    return wrap


def _check(spec: BenchmarkSpec, path: object) -> None:
    from unmirage.judges import JUDGES
    from unmirage.judges.cascades import ASR_METHODS

    if spec.loader not in LOADERS:
        raise UnmirageError(
            f"unknown loader '{spec.loader}' (choose from {', '.join(sorted(LOADERS))})",
            file=path,
            field="loader",
        )
    loader = LOADERS[spec.loader]
    for key in sorted(loader.files - set(spec.data)):
        raise UnmirageError(
            f"loader '{loader.name}' reads a data file named '{key}'", file=path, field=f"data.{key}"
        )
    judges = set(JUDGES) | set(ASR_METHODS)
    for name, case in spec.cases.items():
        where = f"cases.{name}"
        for key in case.records:
            if key not in loader.selectors:
                allowed = ", ".join(sorted(loader.selectors)) or "none"
                raise UnmirageError(
                    f"loader '{loader.name}' has no record selector '{key}' (choose from {allowed})",
                    file=path,
                    field=f"{where}.records.{key}",
                )
            if key in loader.file_selectors and case.records[key] not in spec.data:
                raise UnmirageError(
                    f"'{case.records[key]}' is not a data key (choose from {', '.join(spec.data)})",
                    file=path,
                    field=f"{where}.records.{key}",
                )
        for judge in case.judges:
            if judge not in judges:
                raise UnmirageError(
                    f"unknown judge '{judge}' (choose from {', '.join(sorted(judges))})",
                    file=path,
                    field=f"{where}.judges",
                )
        if case.pairs_with is not None and (case.pairs_with not in spec.cases or case.pairs_with == name):
            raise UnmirageError(
                f"'{case.pairs_with}' is not another case of this benchmark (cases: {', '.join(spec.cases)})",
                file=path,
                field=f"{where}.pairs_with",
            )
        if case.pairs_with is not None and spec.cases[case.pairs_with].kind != case.kind:
            raise UnmirageError(
                f"pairs a {case.kind} case with the {spec.cases[case.pairs_with].kind} case '{case.pairs_with}'",
                file=path,
                field=f"{where}.pairs_with",
            )


def parse_spec(data: dict[str, Any], path: object = "<spec>") -> BenchmarkSpec:
    """Validate a spec mapping; the first problem is a one-line error naming `path` and the field."""
    try:
        spec = BenchmarkSpec.model_validate(data)
    except ValidationError as err:
        raise UnmirageError(format_validation_error(err), file=path) from None
    _check(spec, path)
    return spec.model_copy(update={"source": Path(str(path))})


def load_spec(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> BenchmarkSpec:
    """Read and validate a benchmark YAML (a packaged one or a user's own).

    With `data_root`, every data file must exist under `<data_root>/<name>/`.
    """
    spec = parse_spec(read_yaml(path), path)
    if data_root is not None:
        check_data_files(spec, data_root)
    return spec


def check_data_files(spec: BenchmarkSpec, data_root: str | os.PathLike) -> None:
    """A one-line error naming the spec file and `data.<key>` when a data file is missing."""
    for key, file in spec.paths(data_root).items():
        if not file.is_file():
            raise UnmirageError(f"data file not found: {file}", file=spec.source, field=f"data.{key}")


def _packaged() -> dict[str, Path]:
    return {p.stem: p for p in SPECS_DIR.glob("*.yaml")}


def available_benchmarks() -> list[str]:
    """The names of the packaged benchmarks, sorted."""
    return sorted(_packaged())


def get_benchmark(name: str, data_root: str | os.PathLike | None = None) -> BenchmarkSpec:
    """The packaged benchmark `name`, validated (and its files checked when `data_root` is given)."""
    specs = _packaged()
    if name not in specs:
        raise UnmirageError(f"unknown benchmark '{name}' (choose from {', '.join(sorted(specs))})")
    spec = load_spec(specs[name], data_root)
    if spec.name != name:
        raise UnmirageError(
            f"name '{spec.name}' must match the file name '{name}'", file=spec.source, field="name"
        )
    return spec


def resolve_benchmark(name_or_path: str, data_root: str | os.PathLike | None = None) -> BenchmarkSpec:
    """A packaged benchmark by name, or a user's own spec when `name_or_path` is a .yaml/.yml path."""
    if name_or_path.endswith((".yaml", ".yml")):
        if not Path(name_or_path).is_file():
            raise UnmirageError("benchmark spec not found", file=name_or_path)
        return load_spec(name_or_path, data_root)
    return get_benchmark(name_or_path, data_root)


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The data root: `explicit`, else the `UNMIRAGE_DATA_DIR` environment variable, else None."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None
