"""Loaders of the packaged benchmarks and the case builder that applies a case's transform.

A loader takes the spec's data paths, a case's record selector and the case name, and returns that case's
prompts. `load_case` then applies the transform: a rule rewrite (the code of `attack build`; a question the
rules cannot rewrite is skipped and listed with its reason), a prefill, or a FigStep typographic image.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from unmirage.benchmarks import typography
from unmirage.benchmarks.spec import (
    BenchmarkPrompt,
    BenchmarkSpec,
    PrefillTransform,
    RewriteTransform,
    Transform,
    TypographyTransform,
    check_data_files,
    register_loader,
)
from unmirage.data.vlguard import load_samples
from unmirage.errors import UnmirageError
from unmirage.text.rewrite import valid_rewrites


@dataclass
class CaseData:
    """The prompts of one case, and the questions its transform could not apply to (id, question, reason)."""

    name: str
    prompts: list[BenchmarkPrompt]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        """The distinct question ids of the case."""
        return {p.id for p in self.prompts}

    @property
    def short(self) -> int:
        """Questions that got fewer rewrites than the K their transform asks for (but at least one)."""
        return len({p.id for p in self.prompts if p.extra.get("shots_missing")})


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file with a header; a missing column is a one-line error naming the file and column."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise UnmirageError("missing column", file=path, field=missing[0])
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        for column in columns:
            if row[column] is None:
                raise UnmirageError("row is too short", file=path, record=f"line {i}", field=column)
    return rows


def _require(row: dict[str, str], column: str, path: Path, record: object) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise UnmirageError("empty value", file=path, record=record, field=column)
    return value


def _selected_file(paths: dict[str, Path], records: dict[str, Any], selector: str) -> Path:
    if selector not in records:
        raise UnmirageError(
            f"records must name a data file with '{selector}' ({', '.join(paths)})", field="records"
        )
    return paths[str(records[selector])]


def csv_prompts(
    path: Path,
    case: str,
    records: dict[str, Any],
    *,
    id_columns: tuple[str, ...],
    question: str,
    category: str,
    extra: tuple[str, ...],
    selectors: dict[str, str],
    required: tuple[str, ...] = (),
) -> list[BenchmarkPrompt]:
    """The prompts of a CSV benchmark: the id joins `id_columns` with '-', a selector keeps the rows whose
    column (`selectors[key]`) equals the case's `records[key]`; `question` and `required` must be non-empty."""
    columns = (*id_columns, question, category, *extra)
    prompts = []
    seen: set[str] = set()
    for line, row in enumerate(read_csv(path, tuple(dict.fromkeys(columns))), start=2):
        rid = "-".join(_require(row, c, path, f"line {line}") for c in id_columns)
        if rid in seen:
            raise UnmirageError(
                f"duplicate id {rid}", file=path, record=f"line {line}", field="/".join(id_columns)
            )
        seen.add(rid)
        if any(str(row[selectors[key]]) != str(value) for key, value in records.items()):
            continue
        for column in required:
            _require(row, column, path, rid)
        prompts.append(
            BenchmarkPrompt(
                case=case,
                id=rid,
                question=_require(row, question, path, rid),
                category=row[category],
                extra={c: row[c] for c in extra},
            )
        )
    return prompts


@register_loader("xstest", selectors={"label"}, files={"prompts"})
def load_xstest(paths: dict[str, Path], records: dict[str, Any], case: str) -> list[BenchmarkPrompt]:
    """XSTest (`prompts`: id, prompt, type, label, focus, note): text only; `label` selects safe or unsafe;
    the category is the prompt type."""
    return csv_prompts(
        paths["prompts"],
        case,
        records,
        id_columns=("id",),
        question="prompt",
        category="type",
        extra=("label", "focus", "note"),
        selectors={"label": "label"},
    )


@register_loader("safebench", selectors={"category"}, files={"questions"})
def load_safebench(paths: dict[str, Path], records: dict[str, Any], case: str) -> list[BenchmarkPrompt]:
    """FigStep SafeBench (`questions`: dataset, category_id, task_id, category_name, question, instruction):
    id `<category_id>-<task_id>`, the declarative `instruction` kept for the typographic attack; `category`
    selects a category name."""
    return csv_prompts(
        paths["questions"],
        case,
        records,
        id_columns=("category_id", "task_id"),
        question="question",
        category="category_name",
        extra=("instruction", "dataset"),
        selectors={"category": "category_name"},
        required=("instruction",),
    )


@register_loader("mossbench", selectors={"split"}, file_selectors={"split"})
def load_mossbench(paths: dict[str, Path], records: dict[str, Any], case: str) -> list[BenchmarkPrompt]:
    """MOSSBench: `split` (a data key, benign or contrast) names an `information.json`; image paths are
    relative to its folder; the category is the over-sensitivity type (`metadata.over`)."""
    path = _selected_file(paths, records, "split")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UnmirageError(f"not valid JSON at line {err.lineno}", file=path) from None
    if not isinstance(info, dict):
        raise UnmirageError("must be a JSON object of id -> record", file=path)
    prompts = []
    seen: set[str] = set()
    for key, raw in info.items():
        if not isinstance(raw, dict):
            raise UnmirageError("must be an object", file=path, record=key)
        question, image = raw.get("question"), raw.get("image")
        if not isinstance(question, str) or not question.strip():
            raise UnmirageError("missing or empty", file=path, record=key, field="question")
        if not isinstance(image, str) or not image:
            raise UnmirageError("missing or empty", file=path, record=key, field="image")
        rid = str(raw.get("pid", key))
        if rid in seen:
            raise UnmirageError(f"duplicate id {rid}", file=path, record=key, field="pid")
        seen.add(rid)
        metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        over = metadata.get("over")
        prompts.append(
            BenchmarkPrompt(
                case=case,
                id=rid,
                question=question.strip(),
                image=str(path.parent / image),
                category=str(over) if over is not None else None,
                extra={"over": over},
            )
        )
    return prompts


@register_loader("vlguard", selectors={"file", "subset", "kind"}, file_selectors={"file"}, image_root=True)
def load_vlguard_case(paths: dict[str, Path], records: dict[str, Any], case: str) -> list[BenchmarkPrompt]:
    """VLGuard-schema files (test and attack files) through `unmirage.data.vlguard.load_samples`; image
    paths stay relative to the image root the user gives."""
    path = _selected_file(paths, records, "file")
    samples = load_samples(path, str(records.get("subset", "unsafes")), kind=records.get("kind", "plain"))
    return [
        BenchmarkPrompt(
            case=case,
            id=s.id,
            question=s.question,
            image=s.image,
            category=s.category,
            shot=s.shot,
            extra={"subcategory": s.subcategory} if s.subcategory else {},
        )
        for s in samples
    ]


def rewrite_shots(question: str, word: str, k: int) -> list[str]:
    """Up to K distinct rule rewrites of `question` starting with `word` (the rules mode of `attack build`)."""
    shots: list[str] = []
    for candidate in valid_rewrites(question, word):
        text = " ".join(candidate.text.split())
        if text.lower() not in {s.lower() for s in shots}:
            shots.append(text)
        if len(shots) == k:
            break
    return shots


def _apply(case: str, prompts: list[BenchmarkPrompt], transform: Transform | None, render: bool) -> CaseData:
    data = CaseData(case, [])
    drawing = render and isinstance(transform, TypographyTransform)
    for p in tqdm(prompts, desc=f"{case}: drawing images", disable=not drawing, leave=False):
        if isinstance(transform, RewriteTransform):
            shots = rewrite_shots(p.question, transform.word, transform.k)
            if not shots:
                data.skipped.append(
                    {
                        "id": p.id,
                        "question": p.question,
                        "reason": f"no rule rewrite starts with '{transform.word}'",
                    }
                )
            extra = p.extra | {"original": p.question}
            if 0 < len(shots) < transform.k:
                extra["shots_missing"] = transform.k - len(shots)
            data.prompts += [replace(p, question=s, shot=i, extra=extra) for i, s in enumerate(shots)]
        elif isinstance(transform, PrefillTransform):
            data.prompts.append(replace(p, prefill=transform.text))
        elif isinstance(transform, TypographyTransform):
            text = p.extra.get(transform.field)
            if not isinstance(text, str) or not text.strip():
                raise UnmirageError(
                    f"record {p.id} has no text field '{transform.field}'", field="transform.field"
                )
            image = typography.render_cached(text) if render else typography.image_path(text)
            data.prompts.append(
                replace(p, question=transform.prompt, image=str(image), judged_question=p.question)
            )
        else:
            data.prompts.append(p)
    return data


def read_case(
    spec: BenchmarkSpec,
    case: str,
    paths: dict[str, Path],
    *,
    render: bool = True,
    allow_empty: bool = False,
) -> CaseData:
    """The prompts of `spec`'s case `case` read from the data files `paths` (data key -> file), transform
    applied; errors name the data file, not the spec (`load_case` adds the spec file and case). A case
    that selects no records is an error unless `allow_empty`."""
    from unmirage.benchmarks.spec import LOADERS

    cs = spec.cases[case]
    prompts = LOADERS[spec.loader].function(paths, dict(cs.records), case)
    if not prompts and not allow_empty:
        raise UnmirageError("selects no records", field="records")
    return _apply(case, prompts, cs.transform, render)


def draw_images(spec: BenchmarkSpec, case: str, prompts: list[BenchmarkPrompt]) -> None:
    """Draw (or find in the cache) the typographic images of `prompts` read with `render=False`."""
    transform = spec.cases[case].transform
    if isinstance(transform, TypographyTransform):
        try:
            for p in tqdm(prompts, desc=f"{case}: drawing images", leave=False):
                typography.render_cached(str(p.extra[transform.field]))
        except UnmirageError as err:
            raise UnmirageError(f"{spec.source}: case '{case}': {err}") from None


def load_case(
    spec: BenchmarkSpec, case: str, data_root: str | os.PathLike, *, render: bool = True
) -> CaseData:
    """The prompts of `spec`'s case `case` read from its data folder (`spec.folder`), transform applied.

    `render=False` gives typographic prompts their cache paths without drawing the images (`draw_images`
    draws them later, e.g. only for a subsample).
    """
    if case not in spec.cases:
        raise UnmirageError(
            f"unknown case '{case}' of benchmark {spec.name} (choose from {', '.join(spec.cases)})",
            file=spec.source,
            field="cases",
        )
    check_data_files(spec, data_root)
    try:
        return read_case(spec, case, spec.paths(data_root), render=render)
    except UnmirageError as err:
        raise UnmirageError(f"{spec.source}: case '{case}': {err}") from None


def load_cases(
    spec: BenchmarkSpec, data_root: str | os.PathLike, *, render: bool = True
) -> dict[str, CaseData]:
    """Every case of `spec`, in spec order."""
    return {case: load_case(spec, case, data_root, render=render) for case in spec.cases}
